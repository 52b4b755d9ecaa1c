"""The optimizer of a run: AdamW, with weight decay on matrices only."""

from __future__ import annotations

import torch

from ..config import Config


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
