"""The architecture registry, each architecture's config, and building a model.

    ARCHITECTURES                  model.arch -> `Architecture` (core/arch.py): llama (core/llama.py),
                                   qwen3_moe (core/qwen3_moe.py)
    model_config(arch, **fields)   that architecture's config: a LlamaConfig, a Qwen3MoeConfig, ...
    with_arch(cfg, name)           cfg's common fields as another architecture (--model.arch)
    saved_model_config(d)          a config as a run recorded it, older files included
    foreign_field, stale_default   another architecture's field: refused, or dropped from old files
    model_class(cfg)               the class of cfg.arch; empty_model / build_model build one

Each architecture has its own config class, `ModelConfig` (the common fields, core/arch.py) plus
its own: a field of another architecture is not a field of this one, and is refused in one line
that names the architecture which has it (`foreign_field`).

Adding an architecture is one module that makes its config class and an `Architecture` record
(core/llama.py is the smallest example) and one entry in `REGISTERED` below. Nothing outside the
architecture modules compares architecture names: it asks `architecture(cfg.arch)`.

Layers of core/: layers.py and moe.py (shared blocks) < llama.py, qwen3_moe.py (architectures)
< model.py (this registry).
"""

from __future__ import annotations

from dataclasses import fields

import torch

from .arch import Architecture, ModelConfig
from .llama import LLAMA, Transformer
from .qwen3_moe import QWEN3_MOE

REGISTERED = (LLAMA, QWEN3_MOE)
ARCHITECTURES: dict[str, Architecture] = {a.name: a for a in REGISTERED}
"""model.arch -> its Architecture, in registration order."""

__all__ = ["ARCHITECTURES", "architecture", "build_model", "empty_model", "foreign_field", "model_class", "model_config",
           "saved_model_config", "stale_default", "with_arch"]


def architecture(name: str) -> Architecture:
    """The registered architecture called `name` (a ValueError naming the known ones otherwise)."""
    if not isinstance(name, str) or name not in ARCHITECTURES:
        raise ValueError(f"model.arch: must be one of {', '.join(ARCHITECTURES)}, got {name!r}")
    return ARCHITECTURES[name]


def _field_names(cls: type[ModelConfig]) -> set[str]:
    return {f.name for f in fields(cls)}


def _owner(arch: str, name: str) -> Architecture | None:
    """The first other architecture that has field `name`, when `arch` has not (None otherwise)."""
    if name in _field_names(architecture(arch).config):
        return None
    return next((a for a in REGISTERED if name in _field_names(a.config)), None)


def foreign_field(arch: str, name: str) -> str | None:
    """Why `name` is no field of architecture `arch` when another architecture has it, as one
    line with the fix; None when `arch` has it or no architecture does (a plain unknown key)."""
    other = _owner(arch, name)
    if other is None:
        return None
    return (f"model.{name}: only for model.arch={other.name}, and this model is {arch}; add --model.arch={other.name} "
            "or drop it")


def stale_default(arch: str, name: str, value) -> bool:
    """Whether `name` = `value` is another architecture's field at its default. Configs written
    before each architecture had its own class (config.json, model.json, a titan plan) hold every
    architecture's fields, the others' at their defaults: these carry nothing and are dropped."""
    other = _owner(arch, name)
    return other is not None and value == getattr(other.config(), name)


def model_config(arch: str = LLAMA.name, **values) -> ModelConfig:
    """The config of architecture `arch` with these fields: model_config(arch="qwen3_moe",
    n_experts=8, moe_ffn_dim=96) is a Qwen3MoeConfig. A field the class lacks is a ValueError in
    one line (naming the architecture that has it, if one does)."""
    cls = architecture(arch).config
    unknown = [foreign_field(arch, k) or f"model.{k}: not a field of a {arch} model" for k in values
               if k not in _field_names(cls)]
    if unknown:
        raise ValueError("; ".join(unknown))
    return cls(**values)


def saved_model_config(d: dict) -> ModelConfig:
    """A model config as a run recorded it (`to_dict()`: config.json's "model", model.json, a
    torchtitan plan): `model_config` of its arch (llama when absent), another architecture's fields
    at their defaults dropped (`stale_default`); set to anything else they are refused."""
    arch = d.get("arch", LLAMA.name)
    return model_config(arch, **{k: v for k, v in d.items() if k != "arch" and not stale_default(arch, k, v)})


def with_arch(cfg: ModelConfig, name: str) -> ModelConfig:
    """`cfg` as architecture `name`: cfg itself when it is one, else that architecture's config
    with cfg's common fields and its own at their defaults (--model.arch=llama over the cpu-moe
    preset leaves the MoE fields behind)."""
    cls = architecture(name).config
    if type(cfg) is cls:
        return cfg
    return cls(**{f.name: getattr(cfg, f.name) for f in fields(ModelConfig) if f.init})


def model_class(cfg: ModelConfig) -> type[Transformer]:
    """The class of `cfg.arch` (every one a `Transformer`)."""
    return architecture(cfg.arch).model


def empty_model(cfg: ModelConfig, device: str | torch.device = "cpu") -> Transformer:
    """A model of this architecture on `device` with uninitialised weights, for weights that come
    from elsewhere (a checkpoint, a state snapshot, a gathered FSDP state). Built on the meta
    device, so nothing is allocated twice and no RNG is touched."""
    with torch.device("meta"):
        model = model_class(cfg)(cfg)
    model.to_empty(device=device)
    if cfg.tie_embeddings:  # to_empty gives each module its own storage: tie them again
        model.lm_head.weight = model.embed_tokens.weight
    return model


def build_model(cfg: ModelConfig, device: str | torch.device = "cpu") -> Transformer:
    """A freshly initialised model: `empty_model`, then `init_weights` (seed torch first)."""
    model = empty_model(cfg, device)
    model.init_weights()
    return model
