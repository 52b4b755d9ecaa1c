"""Hugging Face export and import through one explicit weight-name map per architecture.

superpose's module names mirror `transformers.LlamaForCausalLM` (model.arch=llama) and
`Qwen3MoeForCausalLM` (model.arch=qwen3_moe), and its RoPE uses the same "rotate half" layout, so
the maps below are a renaming (the trunk lives under `model.` in HF) with no q/k permutation. The
one exception: superpose holds each MoE layer's experts stacked (`EXPERT_TENSORS`), and the folder
stores them one expert at a time (`mlp.experts.{j}.gate_proj.weight`, ...), the layout of the
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

from ..core.model import ModelConfig
from ..errors import UserError
from ..files import copy_file, file_record, make_dir, sha256_file, write_file, write_text

# superpose name -> Hugging Face LlamaForCausalLM name; {i} is the layer index.
HF_NAME_MAP = {
    "embed_tokens.weight": "model.embed_tokens.weight",
    "layers.{i}.input_layernorm.weight": "model.layers.{i}.input_layernorm.weight",
    "layers.{i}.self_attn.q_proj.weight": "model.layers.{i}.self_attn.q_proj.weight",
    "layers.{i}.self_attn.k_proj.weight": "model.layers.{i}.self_attn.k_proj.weight",
    "layers.{i}.self_attn.v_proj.weight": "model.layers.{i}.self_attn.v_proj.weight",
    "layers.{i}.self_attn.o_proj.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "layers.{i}.post_attention_layernorm.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "layers.{i}.mlp.gate_proj.weight": "model.layers.{i}.mlp.gate_proj.weight",
    "layers.{i}.mlp.up_proj.weight": "model.layers.{i}.mlp.up_proj.weight",
    "layers.{i}.mlp.down_proj.weight": "model.layers.{i}.mlp.down_proj.weight",
    "norm.weight": "model.norm.weight",
    "lm_head.weight": "lm_head.weight",
}


# qwen3_moe: Llama's names plus QK-norm and the router; dense layers (mlp_only_layers) use Llama's mlp names.
QWEN3_MOE_NAME_MAP = {
    **HF_NAME_MAP,
    "layers.{i}.self_attn.q_norm.weight": "model.layers.{i}.self_attn.q_norm.weight",
    "layers.{i}.self_attn.k_norm.weight": "model.layers.{i}.self_attn.k_norm.weight",
    "layers.{i}.mlp.gate.weight": "model.layers.{i}.mlp.gate.weight",
}

# Stacked expert tensors -> the per-expert HF tensors they hold: superpose's (E, 2F, D) gate_up_proj
# is expert j's gate_proj (rows 0..F-1) over its up_proj (rows F..2F-1); (E, D, F) down_proj is
# expert j's down_proj. {j} is the expert index.
EXPERT_TENSORS = {
    "layers.{i}.mlp.experts.gate_up_proj": ("model.layers.{i}.mlp.experts.{j}.gate_proj.weight",
                                            "model.layers.{i}.mlp.experts.{j}.up_proj.weight"),
    "layers.{i}.mlp.experts.down_proj": ("model.layers.{i}.mlp.experts.{j}.down_proj.weight",),
}
_HF_EXPERT = re.compile(r"model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight")


def name_map(arch: str) -> dict[str, str]:
    return QWEN3_MOE_NAME_MAP if arch == "qwen3_moe" else HF_NAME_MAP


def hf_state(model) -> dict[str, Tensor]:
    """A superpose model's weights under Hugging Face names, experts split one per tensor."""
    cfg, out = model.config, {}
    for name, tensor in model.state_dict().items():
        if cfg.tie_embeddings and name == "lm_head.weight":
            continue  # tie_word_embeddings: HF takes the head from the embedding
        layer = re.fullmatch(r"layers\.(\d+)\.(mlp\.experts\.\w+)", name)
        if layer is not None:
            i, which = layer.groups()
            # gate_up_proj (E, 2F, D) -> gate, up (E, F, D) each; down_proj (E, D, F) as it is
            parts = tensor.chunk(2, dim=1) if which.endswith("gate_up_proj") else (tensor,)
            for template, part in zip(EXPERT_TENSORS[f"layers.{{i}}.{which}"], parts):
                for j in range(part.shape[0]):
                    out[template.format(i=i, j=j)] = part[j]
        else:
            out[to_hf_name(name, cfg.arch)] = tensor
    return out


def _rename(name: str, mapping: dict[str, str]) -> str | None:
    for src, dst in mapping.items():
        m = re.fullmatch(re.escape(src).replace(r"\{i\}", r"(\d+)"), name)
        if m:
            return dst.replace("{i}", m.group(1)) if m.groups() else dst
    return None


def to_hf_name(name: str, arch: str = "llama") -> str:
    hf = _rename(name, name_map(arch))
    assert hf is not None, f"no Hugging Face name for {name}: add it to the name map of {arch}"
    return hf


def from_hf_name(name: str, arch: str = "llama") -> str | None:
    """The superpose name of an HF tensor (not a per-expert one), or None for one superpose has no place for."""
    return _rename(name, {hf: ours for ours, hf in name_map(arch).items()})


# ----------------------------------------------------------------------------- export

MIN_EXPORTED_POSITIONS = 2048


def hf_config(cfg: ModelConfig, eot_id: int, dtype: str) -> dict:
    """config.json of the equivalent `LlamaForCausalLM` or `Qwen3MoeForCausalLM`. The RoPE base is
    written both as transformers 4.x reads it (rope_theta) and as 5.x does (rope_parameters)."""
    moe = {}
    if cfg.arch == "qwen3_moe":
        moe = {"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "num_experts": cfg.n_experts,
               "num_experts_per_tok": cfg.top_k, "moe_intermediate_size": cfg.moe_ffn_dim,
               "norm_topk_prob": cfg.norm_topk_prob, "router_aux_loss_coef": cfg.router_aux_coef,
               "decoder_sparse_step": cfg.decoder_sparse_step, "mlp_only_layers": list(cfg.mlp_only_layers),
               "output_router_logits": False, "use_sliding_window": False, "sliding_window": None}
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
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
        **moe,
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
    what, cls = f"{cfg.n_layers}-layer Llama", "LlamaForCausalLM"
    if cfg.arch == "qwen3_moe":
        what, cls = f"{cfg.n_layers}-layer Qwen3-MoE ({cfg.n_experts} experts, top-{cfg.top_k})", "Qwen3MoeForCausalLM"
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
    if c.get("model_type") not in ("llama", "qwen3_moe"):
        raise UserError(f"{path} describes a {c.get('model_type')!r} model; --init-from-hf takes Llama and "
                        "Qwen3-MoE models (model_type 'llama', 'qwen3_moe'); for other architectures use "
                        "superpose.hf.TSTTrainer")
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
                        "superpose.hf.TSTTrainer instead")
    cfg = ModelConfig(vocab_size=c["vocab_size"], dim=dim, n_layers=c["num_hidden_layers"], n_heads=heads,
                      n_kv_heads=c.get("num_key_value_heads") or heads, ffn_dim=c["intermediate_size"],
                      rope_theta=float(theta), norm_eps=float(c.get("rms_norm_eps", 1e-6)),
                      max_seq_len=c.get("superpose_max_seq_len") or c.get("max_position_embeddings", 2048),
                      tie_embeddings=bool(c.get("tie_word_embeddings", False)),
                      init_std=float(c.get("initializer_range", 0.02)))
    if c["model_type"] == "qwen3_moe":  # transformers' Qwen3MoeConfig defaults where a field is absent
        cfg.arch, cfg.n_experts, cfg.top_k = "qwen3_moe", c.get("num_experts", 128), c.get("num_experts_per_tok", 8)
        cfg.moe_ffn_dim, cfg.norm_topk_prob = c.get("moe_intermediate_size", 768), bool(c.get("norm_topk_prob", False))
        cfg.router_aux_coef = float(c.get("router_aux_loss_coef", 0.001))
        cfg.decoder_sparse_step = c.get("decoder_sparse_step", 1)
        cfg.mlp_only_layers = list(c.get("mlp_only_layers") or [])
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
    state, experts = {}, {}  # experts: (layer, kind) -> {expert index: (F, D) or (D, F) tensor}
    for f in files:
        try:
            tensors = load_file(str(f))
        except (SafetensorError, OSError) as e:
            raise UserError(f"cannot read {f} ({e}); the folder is damaged") from None
        for name, t in tensors.items():
            ours = from_hf_name(name, cfg.arch)
            expert = _HF_EXPERT.fullmatch(name) if cfg.arch == "qwen3_moe" else None
            if expert is not None:
                i, j, kind = expert.groups()
                experts.setdefault((int(i), kind), {})[int(j)] = t.float()
                continue
            if ours is None:
                if name.endswith("rotary_emb.inv_freq"):
                    continue  # a RoPE table some old exports saved; superpose computes it
                raise UserError(f"{f} holds {name!r}, which a superpose {cfg.arch} model has no place for")
            state[ours] = t.float()
    state.update(_stack_experts(experts, cfg, hf_dir))
    if cfg.tie_embeddings:
        state.setdefault("lm_head.weight", state.get("embed_tokens.weight"))
    return state


def _stack_experts(experts: dict, cfg: ModelConfig, hf_dir: Path) -> dict[str, Tensor]:
    """Per-expert HF tensors -> superpose's stacked gate_up_proj (E, 2F, D) and down_proj (E, D, F)."""
    out = {}
    for i in sorted({i for i, _ in experts}):
        got = {kind: experts.get((i, kind), {}) for kind in ("gate_proj", "up_proj", "down_proj")}
        for kind, by_index in got.items():
            if sorted(by_index) != list(range(cfg.n_experts)):
                raise UserError(f"{hf_dir}: layer {i} has {kind} for {len(by_index)} experts, its config.json says "
                                f"{cfg.n_experts}; the folder is incomplete")
        E = range(cfg.n_experts)
        gate, up, down = (torch.stack([got[k][j] for j in E]) for k in ("gate_proj", "up_proj", "down_proj"))
        out[f"layers.{i}.mlp.experts.gate_up_proj"] = torch.cat((gate, up), dim=1)  # (E, 2F, D)
        out[f"layers.{i}.mlp.experts.down_proj"] = down  # (E, D, F)
    return out


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

    from ..config import parse_overrides, set_field

    hf_model = read_hf_config(hf_dir)
    probe = copy.deepcopy(cfg)
    probe.model = copy.deepcopy(hf_model)
    given = [(k, v) for k, v in parse_overrides(overrides) if k.startswith("model.")]
    for key, _ in given:
        set_field(probe, key, dict(given)[key])
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
                        f"it: superpose prepare --tokenizer {theirs} --text ... --out DATA_DIR, then "
                        "--data.path DATA_DIR")
