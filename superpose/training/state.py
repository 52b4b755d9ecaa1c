"""The run state: the counters that, with the weights, the optimizer, the data position and the
RNG, fix the rest of a run.

One typed object is both what `Trainer.state_dict()` snapshots in memory (compare's decay
branches start from it) and what a checkpoint's meta.json records, so a new counter is one field
here: it cannot be saved in one place and forgotten in the other, which would break exact resume.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch


@dataclass
class RunState:
    step: int = 0
    """Optimizer steps done, so the 0-based step that runs next."""
    tokens_seen: int = 0
    """Raw tokens consumed: a phase-1 step reads B*L*s, a phase-2 step B*L (a skipped batch too)."""
    skipped_steps: int = 0
    """Batches dropped by train.on_nan=skip (the step still counted)."""
    train_time_s: float = 0.0
    """Wall clock spent in training steps, without evaluation, over every session of the run."""
    elapsed_s: float = 0.0
    """Wall clock since the run started, over every session; live in `Trainer.elapsed_s()`."""
    last_eval: dict = field(default_factory=dict)
    """The latest evaluation: {"val_loss": ..., "val_bpb": ...}."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> RunState:
        """From `to_dict()` or a checkpoint's meta.json, which holds these keys among others. A
        counter an older meta.json lacks (skipped_steps came later) keeps its default."""
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})


def rng_state(device: torch.device) -> dict:
    """torch's generator states: {"torch": CPU state, "cuda": every GPU's (when training on one)}.
    Nothing in a training step draws from them (the data order is the loader's, the switch's
    re-draw has its own generator); a run records them after drawing its initial weights
    (`build.seeded_model`), so that a draw added later would continue exactly on resume."""
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state
