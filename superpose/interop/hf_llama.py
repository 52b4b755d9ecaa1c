"""Hugging Face export and import through one explicit weight-name map per architecture.

superpose's module names mirror `transformers.LlamaForCausalLM` (model.arch=llama) and
`Qwen3MoeForCausalLM` (model.arch=qwen3_moe), and its RoPE uses the same "rotate half" layout, so
each architecture's map (`Architecture.hf_names`, in its own module: core/llama.py,
core/qwen3_moe.py) is a renaming (the trunk lives under `model.` in HF) with no q/k permutation. The
one exception: superpose holds each MoE layer's experts stacked (`qwen3_moe.EXPERT_TENSORS`), and the
folder stores them one expert at a time (`mlp.experts.{j}.gate_proj.weight`, ...), the layout of the
released Qwen3-MoE checkpoints that transformers 4.x and 5.x both read. Parity is tested: HF
logits equal superpose's to 1e-5 in float32, for both architectures.

    export_hf(run_or_checkpoint, out_dir)   config.json (LlamaConfig), model.safetensors,
                                            generation_config.json, tokenizer.json, tokenizer_config.json,
                                            superpose_checksums.json (sizes and sha256, checked on import)
    read_hf_config(hf_dir) -> ModelConfig   the architecture of an HF Llama or Qwen3-MoE folder (refusing others)
    load_hf_state(hf_dir, cfg) -> dict      its weights under superpose names, for `--init-from-hf`

Only next-token models are exported: a phase-1 checkpoint's LM head predicts bags of tokens, so
it is refused. The files are written by hand (no transformers needed to export) in the format
transformers 4.x and 5.x both read.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from torch import Tensor

from ..core.arch import ModelConfig
from ..core.llama import LLAMA
from ..core.model import ARCHITECTURES, architecture, model_config
from ..data.corpus import prepare_command
from ..errors import UserError
from ..files import copy_file, file_record, make_dir, sha256_file, write_file, write_text

HF_NAME_MAP = LLAMA.hf_names
"""superpose name -> Hugging Face LlamaForCausalLM name; {i} is the layer index (core/llama.py)."""


def name_map(arch: str) -> dict[str, str]:
    """superpose name -> HF name of architecture `arch`, {i} the layer index (core/model.py's registry)."""
    return architecture(arch).hf_names


def hf_state(model) -> dict[str, Tensor]:
    """A superpose model's weights under Hugging Face names (an MoE's experts split one per tensor)."""
    cfg, out = model.config, {}
    arch = architecture(cfg.arch)
    for name, tensor in model.state_dict().items():
        if cfg.tie_embeddings and name == "lm_head.weight":
            continue  # tie_word_embeddings: HF takes the head from the embedding
        split = arch.hf_split(name, tensor)
        if split is not None:
            out.update(split)
        else:
            out[to_hf_name(name, cfg.arch)] = tensor
    return out


def _rename(name: str, mapping: dict[str, str]) -> str | None:
    for src, dst in mapping.items():
        m = re.fullmatch(re.escape(src).replace(r"\{i\}", r"(\d+)"), name)
        if m:
            return dst.replace("{i}", m.group(1)) if m.groups() else dst
    return None


def to_hf_name(name: str, arch: str = LLAMA.name) -> str:
    hf = _rename(name, name_map(arch))
    assert hf is not None, f"no Hugging Face name for {name}: add it to the name map of {arch}"
    return hf


def from_hf_name(name: str, arch: str = LLAMA.name) -> str | None:
    """The superpose name of an HF tensor (not a per-expert one), or None for one superpose has no place for."""
    return _rename(name, {hf: ours for ours, hf in name_map(arch).items()})


# ----------------------------------------------------------------------------- export

MIN_EXPORTED_POSITIONS = 2048


def hf_config(cfg: ModelConfig, eot_id: int, dtype: str) -> dict:
    """config.json of the equivalent `LlamaForCausalLM` or `Qwen3MoeForCausalLM`. The RoPE base is
    written both as transformers 4.x reads it (rope_theta) and as 5.x does (rope_parameters)."""
    arch = architecture(cfg.arch)
    return {
        "architectures": [arch.hf_class],
        "model_type": arch.hf_model_type,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.dim,
        "intermediate_size": cfg.ffn_dim,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        # RoPE has no table of positions, so the model runs at any length; the context it trained
        # at is often shorter than what evaluation harnesses need (lm-eval generates up to 256
        # tokens, and asserts when a continuation or max_gen_toks outgrows max_length). So the
        # config (and the tokenizer's model_max_length, whose excess transformers warns about)
        # offers at least 2048 positions, lm-eval's own default when a model names none; the
        # trained context stays in superpose_max_seq_len (read back by `config_from_hf`).
        "max_position_embeddings": max(cfg.max_seq_len, MIN_EXPORTED_POSITIONS),
        "superpose_max_seq_len": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "pretraining_tp": 1,
        "tie_word_embeddings": cfg.tie_embeddings,
        "initializer_range": cfg.init_std,
        "bos_token_id": eot_id,
        "eos_token_id": eot_id,
        "use_cache": True,
        "torch_dtype": dtype,
        "dtype": dtype,
        **arch.hf_config(cfg),
    }


MANIFEST = "superpose_checksums.json"  # an exported folder's record of its files' sizes and sha256
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def export_hf(path: Path | str, out_dir: Path | str, dtype: str = "float32", log=print) -> Path:
    """Write a run's final model (or a phase-2 checkpoint) as a Hugging Face Llama folder."""
    from safetensors.torch import save_file

    from ..inference.load import eot_id, load_model, load_tokenizer, locate, tokenizer_path

    src, out = locate(path), Path(out_dir)
    if src.is_phase1:
        raise UserError(f"{src.name} is a phase-1 (superposition) checkpoint: its LM head predicts bags, not next "
                        "tokens; export a phase-2 checkpoint or the final model")
    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} already exists and is not an empty directory; choose another --hf folder")
    tok_file = tokenizer_path(src)
    tokenizer = load_tokenizer(src)
    eot = eot_id(tokenizer, src)
    eot_token = tokenizer.id_to_token(eot)
    model = load_model(src)
    cfg = model.config
    state = {name: tensor.to(DTYPES[dtype]).contiguous() for name, tensor in hf_state(model).items()}
    make_dir(out, "--hf folder")
    intact = f"the run {src.path} is untouched"
    fix = f"free some space, remove {out} and export again"
    write_file(out / "model.safetensors", lambda p: save_file(state, str(p), metadata={"format": "pt"}),
               intact=intact, fix=fix)
    _write_json(out / "config.json", hf_config(cfg, eot, dtype), intact=intact, fix=fix)
    _write_json(out / "generation_config.json", {"bos_token_id": eot, "eos_token_id": eot}, intact=intact, fix=fix)
    copy_file(tok_file, out / "tokenizer.json", intact=intact, fix=fix)
    # PreTrainedTokenizerFast wraps tokenizer.json as it is: the same ids as superpose (which adds no
    # special tokens: documents are separated by end-of-text, so a prompt may start with it).
    _write_json(out / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": eot_token, "eos_token": eot_token,
        "model_max_length": max(cfg.max_seq_len, MIN_EXPORTED_POSITIONS), "clean_up_tokenization_spaces": False}, intact=intact, fix=fix)
    write_text(out / "README.md", _model_card(src, cfg), intact=intact, fix=fix)
    # What `--init-from-hf` verifies before it trusts the folder (transformers ignores the file).
    _write_json(out / MANIFEST, {"exported_from": str(src.path), "step": src.step, "seq_len": src.seq_len, "files": {
        name: file_record(out / name) for name in ("model.safetensors", "config.json", "tokenizer.json")}},
        intact=intact, fix=fix)
    log(f"exported {src.path} ({src.kind}, {model.num_params():,} parameters, {dtype}) to {out}")
    return out


def _model_card(src, cfg: ModelConfig) -> str:
    tst, steps = src.config.get("tst", {}), src.config.get("train", {}).get("steps")
    if src.phase1_steps:
        bags = f"bags of s={tst['bag_size']}" if not tst.get("schedule") else f"the bag sizes {tst['schedule']}"
        how = (f"Token Superposition Training ({bags} for the first {src.phase1_steps} of "
               f"{steps} steps, then next-token training)")
    else:
        how = "next-token training (no superposition phase)" if tst else "superpose"
    at = f" ({src.name}, after {src.step} steps)" if src.kind == "checkpoint" else ""
    arch = architecture(cfg.arch)
    what, cls = f"{cfg.n_layers}-layer {arch.title}{arch.describe(cfg)}", arch.hf_class
    return (f"# {src.path.name}\n\nA {what} (d={cfg.dim}, vocabulary {cfg.vocab_size}) trained "
            f"with {how}, exported by superpose from `{src.path}`{at}. Nothing of TST remains in the weights: it "
            f"is a plain `{cls}`.\n\n```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
            "model = AutoModelForCausalLM.from_pretrained(PATH)\n"
            "tokenizer = AutoTokenizer.from_pretrained(PATH)\n```\n\n"
            "The training data put the end-of-text token between documents and used no BOS token.\n")


def _write_json(path: Path, obj: dict, **write) -> None:
    write_text(path, json.dumps(obj, indent=2) + "\n", **write)


# ----------------------------------------------------------------------------- import

def read_hf_config(hf_dir: Path | str) -> ModelConfig:
    """The superpose architecture of a Hugging Face Llama folder; a UserError for anything else."""
    hf_dir = Path(hf_dir)
    path = hf_dir / "config.json"
    if not hf_dir.is_dir():
        raise UserError(f"--init-from-hf {hf_dir}: no such directory; give a Hugging Face model folder "
                        "(config.json + model.safetensors)")
    try:
        c = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"--init-from-hf {hf_dir}: no config.json; give a Hugging Face model folder "
                        "(config.json + model.safetensors)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read {path} ({e})") from None
    by_type = {a.hf_model_type: a for a in ARCHITECTURES.values()}
    if c.get("model_type") not in by_type:
        raise UserError(f"{path} describes a {c.get('model_type')!r} model; --init-from-hf takes "
                        f"{' and '.join(a.title for a in by_type.values())} models (model_type "
                        f"{', '.join(repr(t) for t in by_type)}); for other architectures use superpose.interop.hf_trainer.TSTTrainer")
    arch = by_type[c["model_type"]]
    rope = c.get("rope_parameters") or c.get("rope_scaling") or {}
    theta = c.get("rope_theta", rope.get("rope_theta", 10000.0))
    problems = []
    if c.get("hidden_act", "silu") != "silu":
        problems.append(f"hidden_act {c['hidden_act']!r} (superpose has SwiGLU: silu)")
    if c.get("attention_bias") or c.get("mlp_bias"):
        problems.append("biases in attention or MLP")
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        problems.append(f"RoPE scaling {rope.get('rope_type', rope.get('type'))!r}")
    if c.get("pretraining_tp", 1) != 1:
        problems.append(f"pretraining_tp {c['pretraining_tp']}")
    if c.get("use_sliding_window"):
        problems.append("sliding-window attention")
    heads, dim = c["num_attention_heads"], c["hidden_size"]
    if c.get("head_dim") not in (None, dim // heads):
        problems.append(f"head_dim {c['head_dim']} != hidden_size / num_attention_heads")
    if problems:
        raise UserError(f"{path}: superpose's Llama cannot represent {'; '.join(problems)}; train it with "
                        "superpose.interop.hf_trainer.TSTTrainer instead")
    cfg = model_config(arch.name, vocab_size=c["vocab_size"], dim=dim, n_layers=c["num_hidden_layers"], n_heads=heads,
                       n_kv_heads=c.get("num_key_value_heads") or heads, ffn_dim=c["intermediate_size"],
                       rope_theta=float(theta), norm_eps=float(c.get("rms_norm_eps", 1e-6)),
                       max_seq_len=c.get("superpose_max_seq_len") or c.get("max_position_embeddings", 2048),
                       tie_embeddings=bool(c.get("tie_word_embeddings", False)),
                       init_std=float(c.get("initializer_range", 0.02)), **arch.from_hf_config(c))
    cfg.resolve()
    if cfg.problems():
        raise UserError(f"{path}: {'; '.join(cfg.problems())}")
    return cfg


def load_hf_state(hf_dir: Path | str, cfg: ModelConfig) -> dict[str, Tensor]:
    """The weights of an HF Llama folder under superpose names (float32), complete for `cfg`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    hf_dir = Path(hf_dir)
    _verify_export(hf_dir)
    index = hf_dir / "model.safetensors.index.json"
    if index.is_file():
        files = sorted({hf_dir / f for f in json.loads(index.read_text())["weight_map"].values()})
    elif (hf_dir / "model.safetensors").is_file():
        files = [hf_dir / "model.safetensors"]
    elif any(hf_dir.glob("*.bin")):
        raise UserError(f"{hf_dir} holds PyTorch .bin weights; superpose reads safetensors: re-save it with "
                        "model.save_pretrained(DIR, safe_serialization=True)")
    else:
        raise UserError(f"{hf_dir} has no model.safetensors (nor a sharded index); give a Hugging Face model folder")
    arch = architecture(cfg.arch)
    state, rest, origin = {}, {}, {}  # rest: HF tensors the name map does not place (an MoE's experts)
    for f in files:
        try:
            tensors = load_file(str(f))
        except (SafetensorError, OSError) as e:
            raise UserError(f"cannot read {f} ({e}); the folder is damaged") from None
        for name, t in tensors.items():
            ours = from_hf_name(name, cfg.arch)
            if ours is not None:
                state[ours] = t.float()
            elif not name.endswith("rotary_emb.inv_freq"):  # a RoPE table some old exports saved; superpose computes it
                rest[name], origin[name] = t, f
    try:
        state.update(arch.hf_join(rest, cfg, hf_dir))
    except ValueError as e:
        raise UserError(str(e)) from None
    if rest:
        name = next(iter(rest))
        raise UserError(f"{origin[name]} holds {name!r}, which a superpose {cfg.arch} model has no place for")
    if cfg.tie_embeddings:
        state.setdefault("lm_head.weight", state.get("embed_tokens.weight"))
    return state


def _verify_export(hf_dir: Path) -> None:
    """A folder superpose exported carries `superpose_checksums.json` (sizes and sha256 of its
    files): check them, as every other read of superpose's files does. Other HF folders have none."""
    manifest = hf_dir / MANIFEST
    if not manifest.is_file():
        return
    try:
        records = json.loads(manifest.read_text())["files"]
        names = tuple(records)
        assert all(isinstance(r, dict) and isinstance(r["bytes"], int) and isinstance(r["sha256"], str)
                   for r in records.values())
    except (OSError, ValueError, KeyError, TypeError, AssertionError) as e:
        raise UserError(f"{manifest} is unreadable or corrupt ({type(e).__name__}); export the model again") from None
    for name in names:
        f = hf_dir / name
        if not f.is_file() or f.stat().st_size != records[name]["bytes"] or \
                sha256_file(f) != records[name]["sha256"]:
            raise UserError(f"{f} is missing, truncated or corrupt (its size or sha256 differs from {manifest}); "
                            "export the model again")


def init_from_hf(model, hf_dir: Path | str) -> None:
    """Load an HF Llama folder's weights into a freshly built superpose model of the same shape."""
    state = load_hf_state(hf_dir, model.config)
    want = model.state_dict()
    missing = sorted(set(want) - set(state))
    if missing:
        hf = _rename(missing[0], name_map(model.config.arch)) or "per-expert tensors"
        raise UserError(f"{hf_dir} lacks {missing[0]} ({hf}) and {len(missing) - 1} more tensors; the folder is "
                        "incomplete")
    for name, t in state.items():
        if name not in want:
            raise UserError(f"{hf_dir} holds {name} (superpose name), which its config.json's architecture does not "
                            "have")
        if not bool(torch.isfinite(t).all()):
            hf = _rename(name, name_map(model.config.arch)) or f"the experts of {name}"
            raise UserError(f"{hf_dir}: {hf} holds NaN or Inf; the weights are damaged")
        if tuple(t.shape) != tuple(want[name].shape):
            raise UserError(f"{hf_dir}: {name} (superpose name) has shape {list(t.shape)}, its config.json implies "
                            f"{list(want[name].shape)}")
    with torch.no_grad():
        for name, t in state.items():
            want[name].copy_(t)


def config_from_hf(cfg, hf_dir: Path | str, overrides: list[str]):
    """`cfg` with its model section taken from an HF Llama folder (`superpose train --init-from-hf`).

    A `--model.*` override that disagrees with the folder's config.json is refused: the weights
    fix the architecture.
    """
    import copy

    from ..overrides import parse_overrides, set_fields

    hf_model = read_hf_config(hf_dir)
    probe = copy.deepcopy(cfg)
    probe.model = copy.deepcopy(hf_model)
    # model.arch first: when it agrees, every other given field is one the folder's model has too
    given = sorted([(k, v) for k, v in parse_overrides(overrides) if k.startswith("model.")],
                   key=lambda pair: pair[0] != "model.arch")
    set_fields(probe, given)
    probe.model.resolve()
    for key, value in given:
        field = key.split(".", 1)[1]
        if getattr(probe.model, field) != getattr(hf_model, field):
            raise UserError(f"--{key}={value} conflicts with {Path(hf_dir) / 'config.json'} ({field} = "
                            f"{getattr(hf_model, field)}): with --init-from-hf the architecture comes from the Hugging "
                            f"Face model; drop --{key}")
    cfg.model = hf_model
    return cfg.validate()


def check_hf_tokenizer(hf_dir: Path | str, dataset) -> None:
    """Refuse training an HF model on data tokenized with another tokenizer than its own."""
    from ..data.tokenizer import same_tokenizer

    theirs = Path(hf_dir) / "tokenizer.json"
    if not theirs.is_file():
        raise UserError(f"{hf_dir} has no tokenizer.json, so superpose cannot check that {dataset.path} was tokenized "
                        "with the model's tokenizer; save it with tokenizer.save_pretrained (a fast tokenizer) first")
    if not same_tokenizer(theirs, dataset.tokenizer_path):
        raise UserError(f"{dataset.path} was tokenized with another tokenizer than {hf_dir}'s; prepare the data with "
                        "it: " + prepare_command("YOUR_TEXT", "DATA_DIR", "--tokenizer", str(theirs))
                        + ", then --data.path DATA_DIR")
