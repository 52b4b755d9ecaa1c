"""A torchtitan TST checkpoint (DCP, `step-N/`) -> a Hugging Face folder, through torchtitan's own
state-dict adapter (Llama3StateDictAdapter: names, and the q/k permutation from torchtitan's
interleaved RoPE to HF's rotate-half) and superpose's config.json (`interop.hf_llama.hf_config`).

    python -m superpose.titan.export CHECKPOINT_STEP_DIR OUT_DIR [--tokenizer DIR]

Only a phase-2 checkpoint is a next-token model: a checkpoint at or before the switch holds a
bag predictor (its LM head scores bags), so export refuses it. The switch step and the model shape
come from the run itself: TSTTrainer writes its plan (`superpose_tst.json`: steps, phases, switch
step, model shape, tokenizer folder) into the checkpoint folder when it starts, so a run with
`--training.steps` or `--tst.*` changed on the command line is exported by its own plan, never by
the config's defaults.
Llama only: torchtitan's Qwen3 adapter keeps experts in its own grouped layout.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch

from ..core.model import LLAMA, ModelConfig
from ..errors import UserError
from ..interop.hf_llama import hf_config
from .arch import titan_model_spec
from .trainer import PLAN, PLAN_FORMAT


def check_step_dir(step_dir: Path | str) -> None:
    if not (Path(step_dir) / ".metadata").is_file():
        raise UserError(f"{step_dir} is not a torchtitan DCP checkpoint (no .metadata); give a step-N folder of "
                        "the run, e.g. outputs/checkpoint/step-20000")


def load_model_state(step_dir: Path | str, model: ModelConfig) -> tuple[dict[str, torch.Tensor], int]:
    """The model weights (torchtitan names, float32, CPU) and the step of a DCP checkpoint folder."""
    import torch.distributed.checkpoint as dcp

    check_step_dir(step_dir)
    spec = titan_model_spec(model, "export")
    with torch.device("meta"):
        module = spec.model.build()
    state = {k: torch.empty(v.shape, dtype=torch.float32) for k, v in module.state_dict().items()}
    train = {"train_state": {"step": 0, "ntokens_seen": 0}}
    dcp.load({**state, **train}, checkpoint_id=str(step_dir))
    return state, int(train["train_state"]["step"])


def export_hf(step_dir: Path | str, model: ModelConfig, out_dir: Path | str, switch_step: int | None = None,
              tokenizer_dir: Path | str | None = None, dtype: torch.dtype = torch.float32) -> Path:
    """Write `step_dir`'s model as a LlamaForCausalLM folder (model.safetensors + config.json)."""
    from safetensors.torch import save_file

    if model.arch != LLAMA.name:
        raise UserError(f"export covers the {LLAMA.name} architecture; {model.arch!r} checkpoints are not exported yet")
    state, step = load_model_state(step_dir, model)
    if switch_step is not None and step <= switch_step:
        raise UserError(f"{step_dir} is step {step}, at or before the switch (step {switch_step}): a phase-1 "
                         "checkpoint predicts bags, not next tokens; export a later one")
    spec = titan_model_spec(model, "export")
    hf = spec.state_dict_adapter(spec.model, None).to_hf(state)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.to(dtype).contiguous() for k, v in hf.items()}, str(out / "model.safetensors"),
              metadata={"format": "pt"})
    eos = 0
    if tokenizer_dir is not None:
        for name in ("tokenizer.json", "tokenizer_config.json"):
            if (Path(tokenizer_dir) / name).exists():
                shutil.copy(Path(tokenizer_dir) / name, out / name)
        from tokenizers import Tokenizer

        tok_cfg = Path(tokenizer_dir) / "tokenizer_config.json"
        eos_token = json.loads(tok_cfg.read_text()).get("eos_token") if tok_cfg.exists() else None
        if isinstance(eos_token, str):
            eos = Tokenizer.from_file(str(Path(tokenizer_dir) / "tokenizer.json")).token_to_id(eos_token) or 0
    config = hf_config(model.resolve(), eos, str(dtype).removeprefix("torch."))
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out


def read_plan(step_dir: Path | str) -> dict:
    """The TST plan the run recorded next to its `step-N` folders (a one-line UserError if none)."""
    plan_path = Path(step_dir).resolve().parent / PLAN
    check_step_dir(step_dir)
    try:
        plan = json.loads(plan_path.read_text())
        if plan.get("format") != PLAN_FORMAT:
            raise ValueError(f"format {plan.get('format')!r}")
        plan["model"] = ModelConfig(**plan["model"])
        int(plan["switch_step"])
    except FileNotFoundError:
        raise UserError(f"{plan_path} is missing: {step_dir} is not from a superpose.titan run that recorded its "
                        "TST plan; give its switch step and config: --switch-step N --config NAME") from None
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise UserError(f"{plan_path} is unreadable ({e}); give the run's switch step and config: --switch-step N "
                        "--config NAME") from None
    return plan


def main(argv: list[str] | None = None) -> None:
    from . import config_registry

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint", help="a DCP checkpoint folder, e.g. outputs/checkpoint/step-20000")
    ap.add_argument("out", help="the Hugging Face folder to write")
    ap.add_argument("--tokenizer", help="a folder with tokenizer.json (default: the run's hf_assets_path)")
    ap.add_argument("--config", help="only for a checkpoint without the run's plan: the config the run used")
    ap.add_argument("--switch-step", type=int, help="only with --config: the run's last phase-1 step")
    args = ap.parse_args(argv)
    try:
        if args.config is None and args.switch_step is None:
            plan = read_plan(args.checkpoint)
            model, switch, tokenizer = plan["model"], plan["switch_step"], plan.get("hf_assets_path")
        elif args.config is None or args.switch_step is None:
            raise UserError("--config and --switch-step go together (a checkpoint without its run's plan); "
                            "leave both out to read superpose_tst.json next to the checkpoint")
        else:
            cfg = getattr(config_registry, args.config, None)
            if cfg is None:
                raise UserError(f"no config {args.config!r} in superpose.titan.config_registry")
            run = cfg()
            model, switch, tokenizer = model_config(run), args.switch_step, run.hf_assets_path
        print(export_hf(args.checkpoint, model, args.out, switch, args.tokenizer or tokenizer))
    except UserError as e:
        raise SystemExit(f"superpose.titan.export: {e}") from None


def model_config(run) -> ModelConfig:
    """The superpose ModelConfig a superpose.titan config was built from (kept on its ModelSpec)."""
    return run.model_spec.superpose_model


if __name__ == "__main__":
    main()
