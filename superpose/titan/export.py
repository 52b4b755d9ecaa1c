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
Llama (Llama3StateDictAdapter) and Qwen3 MoE (torchtitan's Qwen3StateDictAdapter splits its grouped
experts into Hugging Face's per-expert weights; torchtitan's load-balancing expert bias, which HF has
no place for, is refused unless --drop-expert-bias).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch

from ..core.arch import ModelConfig
from ..core.llama import LLAMA
from ..core.model import saved_model_config
from ..core.qwen3_moe import QWEN3_MOE
from ..errors import UserError
from ..interop.hf_llama import hf_config
from .arch import titan_model_spec
from .trainer import PLAN, PLAN_FORMAT


EXPERT_BIAS = "moe.expert_bias_E"  # torchtitan's auxiliary-loss-free load-balancing bias (routing only)


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
              tokenizer_dir: Path | str | None = None, dtype: torch.dtype = torch.float32,
              drop_expert_bias: bool = False) -> Path:
    """Write `step_dir`'s model as a LlamaForCausalLM or Qwen3MoeForCausalLM folder (model.safetensors +
    config.json). A Qwen3 MoE trained with torchtitan's load-balancing expert bias (its default) routes
    by scores + bias, which Hugging Face's Qwen3MoE cannot hold: refused unless `drop_expert_bias`."""
    from safetensors.torch import save_file

    if model.arch not in (LLAMA.name, QWEN3_MOE.name):
        raise UserError(f"export covers {LLAMA.name} and {QWEN3_MOE.name}; {model.arch!r} checkpoints are not exported")
    state, step = load_model_state(step_dir, model)
    if switch_step is not None and step <= switch_step:
        raise UserError(f"{step_dir} is step {step}, at or before the switch (step {switch_step}): a phase-1 "
                         "checkpoint predicts bags, not next tokens; export a later one")
    bias = max((float(v.abs().max()) for k, v in state.items() if k.endswith(EXPERT_BIAS)), default=0.0)
    if bias > 0 and not drop_expert_bias:
        raise UserError(f"{step_dir} routes by torchtitan's load-balancing expert bias (max |bias| {bias:.3g}), which "
                        "Hugging Face's Qwen3MoE has no place for; add --drop-expert-bias to export it routing by the "
                        "router's scores alone (some tokens then go to other experts than in training)")
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
        elif (Path(tokenizer_dir) / "meta.json").is_file():  # a superpose data directory
            eos = int(json.loads((Path(tokenizer_dir) / "meta.json").read_text()).get("eot_id", 0))
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
        plan["model"] = saved_model_config(plan["model"])
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
    ap.add_argument("--drop-expert-bias", action="store_true",
                    help="a Qwen3 MoE: export without torchtitan's load-balancing expert bias (HF has no place for it)")
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
        print(export_hf(args.checkpoint, model, args.out, switch, args.tokenizer or tokenizer,
                        drop_expert_bias=args.drop_expert_bias))
    except UserError as e:
        raise SystemExit(f"superpose.titan.export: {e}") from None


def model_config(run) -> ModelConfig:
    """The superpose ModelConfig a superpose.titan config was built from (kept on its ModelSpec)."""
    return run.model_spec.superpose_model


if __name__ == "__main__":
    main()
