"""The optimizer of a run: AdamW, with weight decay on matrices only, and its update (clipped to
the global gradient norm, or not applied at all when the step is not finite)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..config import Config
from . import distributed


def configure_optimizer(model: torch.nn.Module, cfg: Config) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices only (not norms; not the embedding unless
    optim.decay_embeddings). Two parameter groups, decayed then not, in the model's order: a
    checkpoint's optimizer.pt numbers the parameters that way."""
    o = cfg.optim
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.ndim >= 2 and (o.decay_embeddings or "embed_tokens" not in name) else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # fused=None (not False) is torch's own default, so optim.fused=false keeps today's kernels.
    return torch.optim.AdamW(groups, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps, fused=True if o.fused else None)


def apply_update(model, optimizer, params: list, grad_norm: Tensor, finite: bool, grad_clip: float) -> list[str]:
    """Clip to the global norm and step when the step is finite; else apply nothing and return the
    names of the tensors with non-finite gradients (this rank's shards under FSDP). Gradients are
    cleared either way."""
    bad_grads = []
    if finite:
        clip = grad_clip if grad_clip > 0 else math.inf
        torch.nn.utils.clip_grads_with_norm_(params, clip, grad_norm)
        optimizer.step()
    else:
        bad_grads = [n for n, p in model.named_parameters()
                     if p.grad is not None and not bool(torch.isfinite(distributed.local(p.grad)).all())]
    optimizer.zero_grad(set_to_none=True)
    return bad_grads
