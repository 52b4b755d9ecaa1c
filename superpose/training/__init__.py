"""Training: build a run once (`build`), step it (`trainer`: its loop and its checkpoints), write
its files (`save`), stop it early (`stops`) and continue it (`resume`), on one process or many (`distributed`),
with its numbers (`metrics`), its run state (`state`) and the execution choices that change
speed, not results (`perf`)."""

from .build import build_trainer, resolve_data, resolve_from_data, run_training
from .trainer import Trainer

__all__ = ["Trainer", "build_trainer", "resolve_data", "resolve_from_data", "run_training"]
