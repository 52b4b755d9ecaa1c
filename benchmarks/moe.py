"""Mixture-of-experts overhead: an MoE training step against a dense model of equal active parameters.

The MoE preset (default cpu-moe: 8 experts of width F_e, top-k) and a dense Llama of the same
width, depth, heads and data whose SwiGLU width is k * F_e (so one token multiplies by the same
number of FFN parameters) run the real `Trainer.train_step`, interleaved step by step (MoE, dense,
dense, MoE, ...), in one process, in phase 1 and phase 2. Per model and phase it prints the median
step time and tokens per second, and the MoE/dense step-time ratio: the cost of routing, sorting
the assignments by expert, the per-expert matmuls (a loop over experts on CPU, `torch._grouped_mm`
on CUDA in bf16) and the load-balancing loss, over the dense FFN of equal active parameters.

    .venv/bin/python benchmarks/moe.py                                   # cpu-moe, synthetic tokens
    .venv/bin/python benchmarks/moe.py --repeats 5 --set train.threads=1  # a quick check
"""

from __future__ import annotations

import argparse
import tempfile

import torch

from common import bench_config, bench_trainer, interleaved, load_average, median, phases, print_machine


def dense_twin(overrides: list[str], cfg) -> list[str]:
    """Overrides that turn the MoE preset into a dense Llama with the same active FFN parameters
    (model.arch=llama leaves the MoE fields behind, so the MoE overrides are left out too)."""
    from superpose.core.llama import LLAMA
    from superpose.core.model import foreign_field

    dense = [o for o in overrides if not (o.startswith("model.") and foreign_field(LLAMA.name, o[6:].split("=")[0]))]
    return [*dense, f"model.arch={LLAMA.name}", f"model.ffn_dim={cfg.model.top_k * cfg.model.moe_ffn_dim}"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="cpu-moe")
    ap.add_argument("--data", help="a prepared data directory (default: synthetic tokens)")
    ap.add_argument("--set", nargs="*", default=[], metavar="SECTION.FIELD=VALUE", help="config overrides (both)")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    args = ap.parse_args()

    moe_cfg = bench_config(args.preset, args.set, args.data)
    dense_cfg = bench_config(args.preset, dense_twin(args.set, moe_cfg), args.data)
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {"moe": bench_trainer(moe_cfg, f"{tmp}/moe"), "dense": bench_trainer(dense_cfg, f"{tmp}/dense")}
    print_machine(f"benchmarks/moe.py --preset {args.preset} {' '.join(args.set)}")
    m, B, L, s = moe_cfg.model, moe_cfg.train.batch_size, moe_cfg.data.seq_len, moe_cfg.tst.bag_size
    for name, t in trainers.items():
        model = t.model
        print(f"{name}: {model.num_params():,} parameters, {model.num_active_params():,} active per token "
              f"({model.num_active_params(non_embedding=True):,} without embedding and head)")
    print(f"MoE: {m.n_experts} experts of width {m.moe_ffn_dim}, top-{m.top_k}; dense FFN width "
          f"{dense_cfg.model.ffn_dim}; B={B} rows x L={L} positions, s={s}; threads={torch.get_num_threads()}; "
          f"{load_average()}")
    p1, p2 = phases(s)
    fns = {f"{name} phase {p.index}": (lambda t=t, p=p: t.train_step(p)) for name, t in trainers.items()
           for p in (p1, p2)}
    times = interleaved(fns, args.repeats, args.warmup)
    print(f"\n{args.repeats} steps each after {args.warmup} warm-up, interleaved; medians")
    for key, ts in times.items():
        tokens = B * L * (s if key.endswith("1") else 1)
        print(f"  {key}: step {median(ts) * 1e3:.1f} ms (min {min(ts) * 1e3:.1f}, max {max(ts) * 1e3:.1f}); "
              f"{B * L / median(ts):,.0f} positions/s, {tokens / median(ts):,.0f} raw tokens/s")
    for phase in (1, 2):
        a, b = times[f"moe phase {phase}"], times[f"dense phase {phase}"]
        pairs = sorted(x / y for x, y in zip(a, b))
        print(f"MoE / dense step time, phase {phase}: {median(a) / median(b):.3f} "
              f"(median of per-round ratios {median(pairs):.3f})")
    print(load_average())


if __name__ == "__main__":
    main()
