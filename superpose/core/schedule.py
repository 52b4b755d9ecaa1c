"""The run as a function of the step: which phase it is in, and its learning rate.

    schedule = Schedule.for_run(cfg)
    schedule.phase(k)      the Phase of 0-based step k: its bag size s (1 = next-token training)
    schedule.lr(k)         warmup-stable-decay learning rate at step k, blind to the phases
    schedule.switch_step   the first next-token step (0 for a baseline run)

A TST run is a list of `Phase`s that the trainer asks every step "which phase is step k in?"
(the shape of modded-nanogpt's training stages). Phase 1 reads bags of `s` raw tokens per
position; phase 2 is ordinary next-token training. Parameters, optimizer state, the data
position and the learning-rate schedule carry straight through the switch: the learning rate is a
function of the global step only, so it cannot tell the phases apart. The phases are data: a
curriculum of several bag sizes is another list of phases, and nothing that asks the schedule
changes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from ..config import Config


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


def lookup(phases: Sequence[Phase], step: int) -> Phase:
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


@dataclass(frozen=True)
class Schedule:
    """The phases of a run and its learning rate, both functions of the 0-based step."""

    phases: tuple[Phase, ...]
    """Consecutive phases covering steps [0, total_steps)."""
    peak_lr: float | None = None
    """None when something else owns the learning rate (a Hugging Face Trainer's scheduler)."""
    warmup_steps: int = 0
    decay_frac: float = 0.0
    min_lr_ratio: float = 0.0
    decay_shape: str = "linear"

    @classmethod
    def tst(cls, total_steps: int, ratio: float, bag_size: int, **lr) -> "Schedule":
        """Phase 1 for round(ratio * total_steps) steps with bags of `bag_size`, then phase 2
        (`build_phases`); `lr` takes the remaining fields (peak_lr, warmup_steps, ...)."""
        return cls(tuple(build_phases(total_steps, ratio, bag_size)), **lr)

    @classmethod
    def for_run(cls, cfg: "Config") -> "Schedule":
        o = cfg.optim
        return cls.tst(cfg.train.steps, cfg.tst.ratio, cfg.tst.bag_size, peak_lr=o.lr, warmup_steps=o.warmup_steps,
                       decay_frac=o.decay_frac, min_lr_ratio=o.min_lr_ratio, decay_shape=o.decay_shape)

    @property
    def total_steps(self) -> int:
        return self.phases[-1].end

    @property
    def switch_step(self) -> int:
        """The first step of next-token training: 0 for a baseline run, total_steps for a run that
        never leaves superposition. Checkpoints at or before it hold bag predictors."""
        return next((p.start for p in self.phases if p.bag_size == 1), self.total_steps)

    def phase(self, step: int) -> Phase:
        return lookup(self.phases, step)

    def lr(self, step: int) -> float:
        assert self.peak_lr is not None, "this schedule leaves the learning rate to its caller"
        return wsd_lr(step, self.total_steps, self.peak_lr, self.warmup_steps, self.decay_frac, self.min_lr_ratio,
                      self.decay_shape)

    def raw_tokens(self, batch_size: int, seq_len: int) -> dict[int, int]:
        """Raw tokens each phase reads, by phase index: a step reads batch_size * seq_len * s."""
        out = {1: 0, 2: 0}
        for p in self.phases:
            out[p.index] += p.num_steps * batch_size * seq_len * p.bag_size
        return out
