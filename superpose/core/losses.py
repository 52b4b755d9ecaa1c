"""The bag losses of a superposition phase, one entry each (`tst.loss`).

An entry says what the loss is (its math: the coefficients the fused kernel weighs each target
with, which also fix its target layout, its unreduced form and its normaliser) and what the run's
start-of-run lines call it. `multi_hot_cross_entropy`, `chunked_multi_hot_cross_entropy` and
`count_valid_targets` (core/superposition.py) look the entry up; nothing else branches on a loss's
name. A new loss is one `BagLoss` in `LOSSES`.

Every function here takes valid (B, L, s) bool, the targets that are not ignored, and g (s,) the
slot weights g_i as `bag_weights` gives them; g~ = s * g / sum(g) (all 1 when uniform).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class BagLoss:
    name: str
    """Its `tst.loss` value."""
    label: str
    """What the start-of-run lines call it ("multi-hot loss")."""
    coefficients: Callable[[Tensor, Tensor, str], tuple[Tensor, Tensor | None]]
    """(valid, g, reduction "mean" or "sum") -> (coef, mix) for the fused kernels
    (core/loss_kernels.py). Its return says the target layout: (coef (B, L, s), None) for one
    term per target slot (MCE), (coef (B, L, 1), mix (B, L, s)) for one term per position over
    a log-weighted mixture of its slots (MCEAlt)."""
    unreduced: Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]
    """(lse (B, L, 1) log-sum-exp of the logits, zy (B, L, s) target logits, valid, g) -> reduction="none"."""
    count: Callable[[Tensor, Tensor], Tensor]
    """(valid, g) -> the normaliser of reduction="sum": the sum of its "sum" coefficients."""


# ----------------------------------------------------------------------------- MCE (paper §3.2)

def mce_coefficients(valid: Tensor, g: Tensor, reduction: str) -> tuple[Tensor, None]:
    """coef[b, j, i] such that the loss is sum over (b, j, i) of coef * nll, 0 for ignored targets.
        "mean": g_i / (valid count of slot i * sum of g over slots that have a valid target).
        "sum":  g~_i."""
    s = valid.shape[-1]
    valid = valid.float()
    if reduction == "mean":
        count = valid.sum(dim=(0, 1))  # (s,)
        g = g * (count > 0)
        return valid * (g / (count.clamp(min=1) * g.sum())), None
    return valid * (g * (s / g.sum())), None


def mce_unreduced(lse: Tensor, zy: Tensor, valid: Tensor, g: Tensor) -> Tensor:
    """nll[b, j, i] * g~_i (B, L, s), zero where the target is ignored."""
    s = zy.shape[-1]
    return (lse - zy).masked_fill(~valid, 0.0) * (g * (s / g.sum()))


def mce_count(valid: Tensor, g: Tensor) -> Tensor:
    """Sum over valid targets of g~_i: with uniform weights the number of valid target tokens."""
    s = valid.shape[-1]
    g = g * (s / g.sum())
    return (valid.float() * g).sum()


# ----------------------------------------------------------------------------- MCEAlt (App. C.2)

def alt_coefficients(valid: Tensor, g: Tensor, reduction: str) -> tuple[Tensor, Tensor]:
    """coef (B, L, 1), the weight of each position's term (1 for "sum", 1/(positions with a valid
    target) for "mean", 0 for a position without one), and mix (B, L, s) = log g~_i on valid slots,
    -inf on ignored ones (0 on a position without a valid slot, whose coef is 0)."""
    s = valid.shape[-1]
    g = g * (s / g.sum())
    live = valid & (g > 0)  # a zero weight takes the slot out of the mixture
    has = live.any(dim=-1, keepdim=True)  # (B, L, 1)
    coef = has.float() if reduction == "sum" else has.float() / has.sum().clamp(min=1)
    mix = torch.where(live, g.log(), -math.inf).masked_fill(~has, 0.0)
    return coef, mix


def alt_unreduced(lse: Tensor, zy: Tensor, valid: Tensor, g: Tensor) -> Tensor:
    """alt[b, j] = lse - logsumexp_i(z[y_i] + log g~_i) (B, L), zero for a position without a target."""
    coef, mix = alt_coefficients(valid, g, "sum")  # (B, L, 1), (B, L, s)
    return ((lse - torch.logsumexp(zy + mix, dim=-1, keepdim=True)) * coef).squeeze(-1)


def alt_count(valid: Tensor, g: Tensor) -> Tensor:
    """The number of positions with a valid target (its terms are per position)."""
    return alt_coefficients(valid, g, "sum")[0].sum()


MCE = BagLoss("mce", "multi-hot", mce_coefficients, mce_unreduced, mce_count)
"""The paper's multi-hot cross-entropy: a weighted mean of s ordinary CE terms per position."""
MCE_ALT = BagLoss("mce_alt", "bag-mass (MCEAlt)", alt_coefficients, alt_unreduced, alt_count)
"""-log of the (weighted) probability mass on the bag, one term per position."""

LOSSES: dict[str, BagLoss] = {loss.name: loss for loss in (MCE, MCE_ALT)}
"""The registry: `tst.loss` name -> its entry (`name in LOSSES`, `', '.join(LOSSES)` for messages)."""


def bag_loss(name: str) -> BagLoss:
    """The entry of `tst.loss` = name; a ValueError naming the known ones otherwise."""
    if name not in LOSSES:
        raise ValueError(f"unknown bag loss {name!r}; use one of {', '.join(LOSSES)}")
    return LOSSES[name]
