"""Faults for the tests that need a process to be signalled, to fail or to die at a chosen point
(test_checkpoint.py, test_distributed.py, test_reliability.py). They are armed here, from the
tests, by wrapping superpose's own functions; superpose itself holds no test hooks.

In this process: `signal_at(trainer, step, "SIGTERM")` before `trainer.train()`.
In a child process: run `cli(*args)` (this file instead of `python -m superpose`, also under
torchrun) with the fault in its environment:

    SUPERPOSE_TEST_SIGNAL_AT_STEP=STEP:SIGNAME  send SIGNAME (e.g. SIGTERM) to the process just
                                                before optimizer step STEP (0-based) starts
    SUPERPOSE_TEST_FAIL_RANK=R:STEP             raise a UserError on rank R just before step STEP, as a
                                                rank-local problem (bad data on one node) would
    SUPERPOSE_TEST_KILL_DURING_SAVE=STEP:POINT  SIGKILL the process at POINT of the save of checkpoint
                                                STEP: after a file (model.safetensors, optimizer.pt,
                                                rng.pt, meta.json), after the rename ("renamed"), after
                                                the `latest` pointer ("latest"), or mid-prune of STEP
                                                ("prune")
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve()


def cli(*args) -> list[str]:
    """The command line of `superpose ARGS` with the faults of the environment armed."""
    return [sys.executable, str(SCRIPT), *map(str, args)]


def signal_at(trainer, step: int, name: str):
    """Send signal `name` to this process just before the trainer's 0-based step `step` starts;
    returns the trainer."""
    step_once = trainer.step_once

    def step_once_then_signal() -> dict:
        if trainer.state.step == step:
            os.kill(os.getpid(), getattr(signal, name))
        return step_once()

    trainer.step_once = step_once_then_signal
    return trainer


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _arm_step_faults(signal_at_step: str, fail_rank: str) -> None:
    """SUPERPOSE_TEST_SIGNAL_AT_STEP and SUPERPOSE_TEST_FAIL_RANK, on every trainer of the process."""
    from superpose.errors import UserError
    from superpose.training import Trainer

    real = Trainer.step_once
    at = signal_at_step.split(":") if signal_at_step else None

    def step_once(self) -> dict:
        step, rank = self.state.step, self.par.rank
        if at and at[0] == str(step):
            os.kill(os.getpid(), getattr(signal, at[1]))
        if fail_rank == f"{rank}:{step}":
            raise UserError(f"test failure injected on rank {rank} at step {step} (SUPERPOSE_TEST_FAIL_RANK)")
        return real(self)

    Trainer.step_once = step_once


def _arm_kill_during_save(step: int, point: str) -> None:
    """SUPERPOSE_TEST_KILL_DURING_SAVE: SIGKILL at `point` of checkpoint `step`'s save, found by
    the calls the save makes there (training/save.py's order: each file and its record, meta.json,
    fsync of the temporary, rename, fsync of checkpoints/, `latest`; prune renames, then deletes)."""
    from superpose.checkpoint import DIRNAME, step_name
    from superpose.training import save as ck

    name = step_name(step)
    real_record, real_fsync, real_write, real_rmtree = ck.file_record, ck.fsync_path, ck.write_file, shutil.rmtree

    def file_record(path: Path) -> dict:
        record = real_record(path)
        if path.name == point and path.parent.name.startswith(f".tmp-{name}-"):
            _die()
        return record

    def fsync_path(path: Path) -> None:
        if point == "meta.json" and path.name.startswith(f".tmp-{name}-"):  # every file written, not renamed
            _die()
        real_fsync(path)
        if point == "renamed" and path.name == DIRNAME and (path / name).is_dir():
            _die()

    def write_file(path: Path, *args, **kwargs):
        out = real_write(path, *args, **kwargs)
        if point == "latest" and path.name == "latest" and path.read_text().strip() == name:
            _die()
        return out

    def rmtree(path, *args, **kwargs):
        if point == "prune" and Path(path).name == f".del-{name}":
            _die()
        return real_rmtree(path, *args, **kwargs)

    ck.file_record, ck.fsync_path, ck.write_file, shutil.rmtree = file_record, fsync_path, write_file, rmtree


def arm_from_environment() -> None:
    """The faults the SUPERPOSE_TEST_* variables ask for (see the module docstring)."""
    env = os.environ
    if env.get("SUPERPOSE_TEST_SIGNAL_AT_STEP") or env.get("SUPERPOSE_TEST_FAIL_RANK"):
        _arm_step_faults(env.get("SUPERPOSE_TEST_SIGNAL_AT_STEP", ""), env.get("SUPERPOSE_TEST_FAIL_RANK", ""))
    if env.get("SUPERPOSE_TEST_KILL_DURING_SAVE"):
        step, point = env["SUPERPOSE_TEST_KILL_DURING_SAVE"].split(":")
        _arm_kill_during_save(int(step), point)


if __name__ == "__main__":
    from superpose.cli import main

    arm_from_environment()
    sys.exit(main())
