"""Fault injection for the tests that need a real process to be signalled, to fail or to die at a
chosen point (tests/test_checkpoint.py, tests/test_distributed.py). Each fault is armed by one
environment variable; with none set, `arm` leaves a trainer untouched and `kill_point` is one
dictionary lookup, so training never runs test code.

    SUPERPOSE_TEST_SIGNAL_AT_STEP=STEP:SIGNAME  send SIGNAME (e.g. SIGTERM) to this process just
                                                before optimizer step STEP (0-based) starts
    SUPERPOSE_TEST_FAIL_RANK=R:STEP             raise a UserError on rank R just before step STEP, as a
                                                rank-local problem (bad data on one node) would
    SUPERPOSE_TEST_KILL_DURING_SAVE=STEP:POINT  SIGKILL this process at POINT of the save of checkpoint
                                                STEP: after a file (model.safetensors, optimizer.pt,
                                                rng.pt, meta.json), after the rename ("renamed"), after
                                                the `latest` pointer ("latest"), or mid-prune of STEP
                                                ("prune")
"""

from __future__ import annotations

import os
import signal

from ..errors import UserError


def arm(trainer):
    """Wrap `trainer.step_once` with the step faults the environment asks for; returns the trainer."""
    signal_at = os.environ.get("SUPERPOSE_TEST_SIGNAL_AT_STEP", "").split(":")
    fail_at = os.environ.get("SUPERPOSE_TEST_FAIL_RANK")
    if len(signal_at) != 2 and not fail_at:
        return trainer
    step_once = trainer.step_once

    def step_once_with_faults() -> dict:
        step, rank = trainer.state.step, trainer.par.rank
        if len(signal_at) == 2 and signal_at[0] == str(step):
            os.kill(os.getpid(), getattr(signal, signal_at[1]))
        if fail_at == f"{rank}:{step}":
            raise UserError(f"test failure injected on rank {rank} at step {step} (SUPERPOSE_TEST_FAIL_RANK)")
        return step_once()

    trainer.step_once = step_once_with_faults
    return trainer


def kill_point(step: int, point: str) -> None:
    """A point of a checkpoint save where SUPERPOSE_TEST_KILL_DURING_SAVE can kill the process."""
    if os.environ.get("SUPERPOSE_TEST_KILL_DURING_SAVE") == f"{step}:{point}":
        os.kill(os.getpid(), signal.SIGKILL)
