"""superpose's multi-hot next-bag loss as a torchtitan loss.

torchtitan calls a loss as `loss(pred, labels, global_valid_tokens) -> (loss, metrics)` and
expects the sum over this micro-batch divided by the global count of valid targets (so gradient
accumulation and data parallelism are exact). `MultiHotLoss` is exactly superpose's
`multi_hot_cross_entropy(..., reduction="sum")` divided by that count; wrap it in torchtitan's
`ChunkedLossWrapper` and the LM head runs chunk by chunk along the positions, the (B, L, s)
targets chunked along with them.

labels: (B, L) next-token labels (phase 2, validation): ordinary summed cross-entropy, the same
    `F.cross_entropy` call as torchtitan's `CrossEntropyLoss`, bit for bit;
        or (B, L, s) next-bag targets (phase 1, made by the trainer with superpose's
    `bag_targets`): the multi-hot loss with the configured bag weights, MCE or MCEAlt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torchtitan.components.loss import BaseLoss
from torchtitan.config import CompileConfig

from ..core.losses import MCE
from ..core.superposition import multi_hot_cross_entropy


class MultiHotLoss(BaseLoss):
    """Summed multi-hot next-bag cross-entropy / global valid targets (superpose's core)."""

    @dataclass(kw_only=True, slots=True)
    class Config(BaseLoss.Config):
        weights: str = "uniform"
        """Bag slot weights: uniform, power or exp. A TST trainer sets it from tst.weights."""
        loss: str = "mce"
        """mce or mce_alt. A TST trainer sets it from tst.loss."""

    def __init__(self, config: Config, *, compile_config: CompileConfig | None = None):
        self.weights, self.kind = config.weights, config.loss

    def __call__(self, pred: torch.Tensor, labels: torch.Tensor, global_valid_tokens: torch.Tensor | None = None,
                 **kwargs: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        targets = labels if labels.dim() == 3 else labels.unsqueeze(-1)  # (B, L, s) or (B, L, 1)
        bag = targets.shape[-1] > 1
        loss = multi_hot_cross_entropy(pred, targets, self.weights if bag else "uniform", reduction="sum",
                                       loss=self.kind if bag else MCE.name)
        if global_valid_tokens is not None:
            loss = loss / global_valid_tokens
        return loss, {}
