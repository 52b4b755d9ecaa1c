"""How loud the transformer blocks are relative to the embeddings, per init scheme (issue 10).

The crossover study found TST's gain at cpu-small scale moves by ~0.2 nats with the init of the
transformer body. This script measures the quantity the findings point at: the RMS of what each
block writes into the residual stream (attention and MLP outputs), relative to the RMS of the
stream's input, for ordinary token inputs (phase 2) and for bag-averaged inputs (phase 1, whose
RMS is ~1/sqrt(s) of a single embedding's at init). It measures at init, and with --switch at the
phase switch of a real TST run (the model after its phase-1 steps), where the model meets single
tokens for the first time.

    .venv/bin/python benchmarks/residual_scale.py --set data.path=/tmp/spdata-4096 [--switch]
"""

from __future__ import annotations

import argparse
import copy
import json

import torch

from common import ROOT  # noqa: F401  (puts the checkout on sys.path)

from superpose.overrides import parse_overrides, set_fields
from superpose.presets import preset
from superpose.core.arch import INIT_SCHEMES
from superpose.core.superposition import superpose_embeddings
from superpose.data import open_dataset
from superpose.training import Trainer, build_trainer


def rms(x: torch.Tensor) -> float:
    return float(x.float().pow(2).mean().sqrt())


@torch.no_grad()
def block_scales(model, h: torch.Tensor) -> dict:
    """Run the blocks on inputs h (B, L, D); RMS of the input, of each block's attention and MLP
    writes, and of the residual stream before the final norm."""
    writes: list[tuple[str, float]] = []
    captured = {}

    def write_hook(name):  # a forward hook must return None, or its value replaces the output
        return lambda mod, i, o: writes.append((name, rms(o))) and None

    hooks = [m.register_forward_hook(write_hook(name))
             for name, m in model.named_modules() if name.endswith(("self_attn", "mlp"))]
    hooks.append(model.norm.register_forward_hook(lambda mod, i, o: captured.update(stream=rms(i[0]))))
    model(inputs_embeds=h)
    for hk in hooks:
        hk.remove()
    attn = [v for n, v in writes if n.endswith("self_attn")]
    mlp = [v for n, v in writes if n.endswith("mlp")]
    return {"input_rms": rms(h), "attn_write_rms": attn, "mlp_write_rms": mlp,
            "mean_write_over_input": (sum(attn) + sum(mlp)) / (len(attn) + len(mlp)) / rms(h),
            "final_stream_over_input": captured["stream"] / rms(h)}


def measure(trainer: Trainer, rows: torch.Tensor, s: int) -> dict:
    model = trainer.model
    tokens = model.embed(rows[:, : rows.shape[1] // s])  # (B, L, D): L single tokens
    bags = superpose_embeddings(model.embed(rows), s)  # (B, L, D): L bags of s
    return {"tokens (phase 2 input)": block_scales(model, tokens), f"bags of {s} (phase 1 input)": block_scales(model, bags)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="cpu-small")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    ap.add_argument("--switch", action="store_true", help="also train each init through phase 1 and measure there")
    ap.add_argument("--rows", type=int, default=16)
    a = ap.parse_args()
    base = set_fields(preset(a.preset), parse_overrides([f"--{kv}" for kv in a.set]))
    ds = open_dataset(base.data.path)
    s, L = base.tst.bag_size, base.data.seq_len
    rows = torch.from_numpy(ds.train.read(0, a.rows * s * L)).view(a.rows, s * L)  # (B, s*L)
    out = {}
    for init in INIT_SCHEMES:
        cfg = copy.deepcopy(base)
        cfg.model.init = init
        t = build_trainer(cfg.validate(), ROOT / "runs" / f"residual-scale-{init}", ds, log=lambda m: None)
        out[init] = {"init": measure(t, rows, s)}
        if a.switch:
            t.begin(progress=False)
            while t.state.step < t.schedule.switch_step:
                t.step_once()
            out[init]["switch"] = measure(t, rows, s)
        for when, m in out[init].items():
            for inp, v in m.items():
                print(f"{init:<11} {when:<7} {inp:<26} input rms {v['input_rms']:.4f}  mean block write / input "
                      f"{v['mean_write_over_input']:.3f}  final stream / input {v['final_stream_over_input']:.2f}",
                      flush=True)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
