"""The run as a function of the step: which phase it is in, and its learning rate.

    schedule = cfg.build_schedule()   (a run's: config.Config.build_schedule, its phases from core/tst_spec.py)
    schedule.phase(k)      the Phase of 0-based step k: its bag size s (1 = next-token training)
    schedule.lr(k)         warmup-stable-decay learning rate at step k, blind to the phases
    schedule.switch_step   the first next-token step (0 for a baseline run)

A TST run is a list of `Phase`s that the trainer asks every step "which phase is step k in?"
(the shape of modded-nanogpt's training stages). Phase 1 reads bags of `s` raw tokens per
position; phase 2 is ordinary next-token training. Parameters, optimizer state, the data position
and the learning-rate schedule carry straight through every switch: the learning rate is a
function of the global step only, so it cannot tell the phases apart. The phases are data: a
bag-size curriculum (tst.schedule = "8:0.1,4:0.1,2:0.1") is several phase-1 stages in a row before
phase 2, and `Phase.mode` says which side of the model a stage bags; nothing that asks the
schedule changes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from collections.abc import Sequence

from .superposition import Mode


@dataclass(frozen=True)
class Phase:
    """Steps [start, end) trained with bags of `bag_size` raw tokens, on the side(s) `mode` says."""

    index: int
    """1 for superposition, 2 for next-token training (a baseline run is all phase 2). Every stage
    of a bag-size curriculum is a phase 1."""
    name: str
    bag_size: int
    start: int
    end: int
    mode: str = Mode.FULL
    """Which side(s) the phase bags (`superposition.Mode`)."""

    @property
    def num_steps(self) -> int:
        return self.end - self.start

    @property
    def input_bag(self) -> int:
        """Raw tokens averaged into one input position (1: ordinary token input)."""
        return Mode(self.mode).input_bag(self.bag_size)

    @property
    def target_bag(self) -> int:
        """Targets per position (1: one next token)."""
        return Mode(self.mode).target_bag(self.bag_size)

    @classmethod
    def of(cls, bag_size: int, mode: str = Mode.FULL) -> Phase:
        """The phase of bags of `bag_size` (1: next-token training) for a loss outside a run's
        plan, such as one batch's: it covers step 0 only."""
        if bag_size == 1:
            return cls(2, "next-token", 1, 0, 1)
        return cls(1, "superposition", bag_size, 0, 1, mode)

    def row_tokens(self, seq_len: int) -> int:
        """Raw input tokens a row of this phase reads: s*L when the input is bagged, else L."""
        return self.input_bag * seq_len


def parse_stages(text: str) -> list[tuple[int, float]]:
    """A bag-size curriculum "8:0.1,4:0.1,2:0.1" -> [(8, 0.1), (4, 0.1), (2, 0.1)]: bag size and
    fraction of the run's steps, in training order. Raises ValueError naming what is wrong."""
    stages = []
    for part in text.replace(" ", "").split(","):
        size, sep, frac = part.partition(":")
        try:
            s, f = int(size), float(frac)
        except ValueError:
            raise ValueError(f"stage {part!r} is not BAG:FRACTION (e.g. 8:0.1)") from None
        if not sep or s < 2:
            raise ValueError(f"stage {part!r}: the bag size must be an integer >= 2 (next-token training follows "
                             "the stages by itself)")
        if not (0.0 < f <= 1.0 and math.isfinite(f)):
            raise ValueError(f"stage {part!r}: the fraction must be in (0, 1]")
        stages.append((s, f))
    if sum(f for _, f in stages) > 1.0 + 1e-9:
        raise ValueError(f"the fractions sum to {sum(f for _, f in stages):g}, past 1: the stages cannot take more "
                         "than the whole run")
    return stages


def build_phases(total_steps: int, ratio: float, bag_size: int, mode: str = "full",
                 stages: Sequence[tuple[int, float]] | None = None) -> list[Phase]:
    """Superposition stages, then next-token training, as consecutive phases over the run.

    stages None: one stage, bags of `bag_size` for round(ratio * total_steps) steps (two-phase TST).
    stages [(s_1, f_1), (s_2, f_2), ...]: a curriculum; stage k ends at round((f_1 + .. + f_k) * T),
    so the fractions' rounding never adds up to more or less than their sum. A stage that rounds
    to zero steps is dropped. With no superposition step left (ratio 0, bag_size 1) the run is the
    plain baseline: a single next-token phase (numbered 2, since it is the recovery-style phase).
    `round` is Python's (ties to even).
    """
    if stages is None:
        stages = [(bag_size, ratio)] if bag_size > 1 else []
    phases, start, acc = [], 0, 0.0
    for s, f in stages:
        acc += f
        end = min(round(acc * total_steps), total_steps)
        if end > start:
            name = "superposition" + ("" if mode == Mode.FULL else f" ({mode} only)")
            phases.append(Phase(1, name if len(stages) == 1 else f"{name} s={s}", s, start, end, mode))
            start = end
    if start < total_steps:
        phases.append(Phase(2, "next-token", 1, start, total_steps))
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
        """Raw tokens each phase reads, by phase index: a step reads batch_size * row_tokens."""
        out = {1: 0, 2: 0}
        for p in self.phases:
            out[p.index] += p.num_steps * batch_size * p.row_tokens(seq_len)
        return out
