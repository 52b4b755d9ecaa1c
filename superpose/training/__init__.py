"""Training: build a run once (`build`), step it (`trainer`), and persist it (`checkpoint`,
`resume`), on one process or many (`distributed`), with its numbers (`metrics`) and the
execution choices that change speed, not results (`perf`)."""

from .trainer import Trainer, resolve_data, run_training

__all__ = ["Trainer", "resolve_data", "run_training"]
