"""The architecture registry, the model config and building a model.

    ARCHITECTURES        model.arch -> `Architecture` (core/arch.py): llama (core/llama.py),
                         qwen3_moe (core/qwen3_moe.py)
    ModelConfig          the common fields (core/arch.py) plus each architecture's own
    model_class(cfg)     the class of cfg.arch; empty_model / build_model build one

Adding an architecture is one module that makes an `Architecture` record (core/llama.py is the
smallest example) and one entry in `REGISTERED` below. Nothing outside the architecture modules
compares architecture names: it asks `architecture(cfg.arch)`.

Layers of core/: layers.py and moe.py (shared blocks) < llama.py, qwen3_moe.py (architectures)
< model.py (this registry).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from .arch import Architecture, CommonConfig
from .layers import KVCache
from .llama import LLAMA, Transformer
from .qwen3_moe import QWEN3_MOE

REGISTERED = (LLAMA, QWEN3_MOE)
ARCHITECTURES: dict[str, Architecture] = {a.name: a for a in REGISTERED}
"""model.arch -> its Architecture, in registration order."""

__all__ = ["ARCHITECTURES", "LLAMA", "QWEN3_MOE", "KVCache", "ModelConfig", "Transformer", "architecture",
           "build_model", "empty_model", "model_class"]


def architecture(name: str) -> Architecture:
    """The registered architecture called `name` (a ValueError naming the known ones otherwise)."""
    if name not in ARCHITECTURES:
        raise ValueError(f"model.arch: must be one of {', '.join(ARCHITECTURES)}, got {name!r}")
    return ARCHITECTURES[name]


# Dataclass fields come base class last first, so the common fields lead and each architecture's
# follow in registration order: config.json keeps one flat, stable "model" section.
_OWN_FIELDS = tuple(a.fields for a in reversed(REGISTERED) if a.fields is not None)


@dataclass
class ModelConfig(*_OWN_FIELDS, CommonConfig):
    """The architecture: the common fields and every registered architecture's own (each of
    which keeps its default under another architecture)."""

    def problems(self) -> list[str]:
        """Every way this architecture is invalid, as 'field: why' strings (empty if none)."""
        out = self.common_problems()
        if self.arch not in ARCHITECTURES:
            return out + [f"model.arch: must be one of {', '.join(ARCHITECTURES)}, got {self.arch!r}"]
        mine = ARCHITECTURES[self.arch]
        out += mine.problems(self)
        own = {f.name for f in fields(mine.fields)} if mine.fields is not None else set()
        for other in REGISTERED:  # fields this model would silently ignore
            if other is mine or other.fields is None:
                continue
            default = other.fields()
            unused = [f"model.{f.name}" for f in fields(default)
                      if f.name not in own and getattr(self, f.name) != getattr(default, f.name)]
            if unused:
                out.append(f"{', '.join(unused)}: only for model.arch={other.name} (this model is {self.arch}); add "
                           f"--model.arch={other.name} or drop them")
        return out


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
