"""Phases as data, and the one learning-rate schedule that spans them.

A TST run is a list of `Phase`s that the trainer asks every step "which phase is step k in?"
(the shape of modded-nanogpt's training stages). Phase 1 reads bags of `s` raw tokens per
position; phase 2 is ordinary next-token training. Parameters, optimizer state, the data
position and the learning-rate schedule carry straight through the switch: the schedule is a
function of the global step only, so it cannot tell the phases apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Phase:
    """Steps [start, end) trained with bags of `bag_size` raw tokens per position."""

    index: int
    """1 for superposition, 2 for next-token training (a baseline run is all phase 2)."""
    name: str
    bag_size: int
    start: int
    end: int

    @property
    def num_steps(self) -> int:
        return self.end - self.start


def build_phases(total_steps: int, ratio: float, bag_size: int) -> list[Phase]:
    """Phase 1 for round(ratio * total_steps) steps with bags of `bag_size`, then phase 2.

    With ratio = 0, bag_size = 1, or a phase 1 that rounds to zero steps, the run is the plain
    baseline: a single next-token phase (numbered 2, since it is the recovery-style phase).
    `round` is Python's (ties to even), applied to ratio * total_steps.
    """
    switch = round(ratio * total_steps) if bag_size > 1 else 0
    phases = []
    if switch > 0:
        phases.append(Phase(1, "superposition", bag_size, 0, switch))
    if switch < total_steps:
        phases.append(Phase(2, "next-token", 1, switch, total_steps))
    return phases


def lookup(phases: list[Phase], step: int) -> Phase:
    """The phase that global step `step` (0-based) belongs to."""
    for phase in phases:
        if phase.start <= step < phase.end:
            return phase
    raise IndexError(f"step {step} is outside the run [0, {phases[-1].end})")


DECAY_SHAPES = ("linear", "cosine", "sqrt")


def wsd_lr(step: int, total_steps: int, peak_lr: float, warmup_steps: int, decay_frac: float,
           min_lr_ratio: float = 0.0, decay_shape: str = "linear") -> float:
    """Warmup-stable-decay learning rate at 0-based optimizer step `step`.

    warmup: peak * (step+1)/warmup for the first `warmup_steps` steps (never 0 at step 0);
    stable: peak; decay: over the last round(decay_frac * total_steps) steps from peak down to
    min_lr_ratio * peak, reached at the last step. Shapes: "linear", "cosine" (half cosine) and
    "sqrt" (1 - sqrt(progress), Hägele et al. 2024).
    """
    decay_steps = round(decay_frac * total_steps)
    decay_start = total_steps - decay_steps
    if step < warmup_steps and step < decay_start:
        return peak_lr * (step + 1) / warmup_steps
    if step < decay_start:
        return peak_lr
    # progress runs 1/decay_steps .. 1, so the first decay step is already below peak and the
    # last one lands exactly on the floor.
    progress = (step - decay_start + 1) / decay_steps
    if decay_shape == "linear":
        frac = 1.0 - progress
    elif decay_shape == "cosine":
        frac = 0.5 * (1.0 + math.cos(math.pi * progress))
    elif decay_shape == "sqrt":
        frac = 1.0 - math.sqrt(progress)
    else:
        raise ValueError(f"unknown decay shape {decay_shape!r}; use one of {', '.join(DECAY_SHAPES)}")
    return peak_lr * (min_lr_ratio + (1.0 - min_lr_ratio) * frac)
