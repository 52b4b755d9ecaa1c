"""The argument checks of the public TST functions (core/superposition.py).

Each public function checks what it is given and raises ValueError (wrong shape or value) or
TypeError (wrong type or dtype) naming the argument, instead of an AssertionError, "not enough
values to unpack" or an error from deep inside torch. Each check returns what it checked.
"""

from __future__ import annotations

import torch
from torch import Tensor


def check_tensor(t: object, name: str, shape: str, kind: str | None = None) -> Tensor:
    """`t` as a Tensor with len(shape.split(",")) dimensions and, kind "ids", an integer dtype or,
    kind "float", a floating dtype."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {shape}, got {type(t).__name__}")
    ndim = len(shape.strip("()").split(","))
    if t.dim() != ndim:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
    if t.numel() == 0:  # an empty batch: torch's own error names an ambiguous reshape deep inside
        raise ValueError(f"{name} is empty (shape {tuple(t.shape)}); give at least one row of at least one position")
    if kind == "ids" and (t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool):
        raise TypeError(f"{name} must hold integer token ids (torch.long), got {t.dtype}")
    if kind == "float" and not t.dtype.is_floating_point:
        raise TypeError(f"{name} must be floating point (an integer mean would be floored), got {t.dtype}")
    return t


def check_size(value: object, name: str) -> int:
    """`value` as an int >= 1 (a bag size, a window, chunk_rows); a bool or a float is refused."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


def check_targets(logits_shape: tuple[int, ...], targets: object, name: str = "targets") -> Tensor:
    """targets (B, L, s) of integer ids whose (B, L) match the logits' or hidden states'."""
    check_tensor(targets, name, "(B, L, s)", "ids")
    if tuple(targets.shape[:2]) != tuple(logits_shape[:2]):
        raise ValueError(f"{name} has shape {tuple(targets.shape)}, but (B, L) must match the logits' "
                         f"{tuple(logits_shape[:2])}")
    return targets


def check_target_ids(targets: Tensor, ignore_index: int) -> None:
    """Refuse a negative target id other than `ignore_index`: the loss's gathers would clamp or wrap
    it into some other token's loss without a word. (Skipped inside torch.compile's graph: the
    trainer's targets come from data checked against the vocabulary when it is loaded.)"""
    if torch.compiler.is_compiling():
        return
    bad = (targets < 0) & (targets != ignore_index)
    if bool(bad.any()):
        raise ValueError(f"targets hold the negative id {int(targets[bad][0])}; token ids are >= 0, and only "
                         f"ignore_index ({ignore_index}) marks a slot without a target")
