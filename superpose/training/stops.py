"""How a run stops early, and what it says then: SIGINT/SIGTERM (`StopSignals`, `interrupted`,
`stopped_at_once`) or a NaN or Inf (`non_finite_lines`, `non_finite_error`), each with a
one-line message saying what was kept and how to go on. `Trainer.train` and compare's lock-step
(`experiments/arms.py`) use them."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from pathlib import Path

from ..config import nan_advice
from ..core.schedule import Phase
from ..errors import Interrupted, UserError, command
from ..checkpoint import checkpoints


def newest_checkpoint_note(run_dir: Path) -> str:
    """'the newest checkpoint step-N is intact', or '' before the first one."""
    found = checkpoints(run_dir)
    return f"the newest checkpoint {found[-1][1].name} is intact" if found else ""


def stopped_at_once(run_dir: Path, step: int, signum: int) -> str:
    """What a second SIGINT/SIGTERM (which stops without saving) leaves, and how to go on."""
    name = signal.Signals(signum).name
    saved = checkpoints(run_dir)
    if saved:
        return (f"stopped at once by a second {name} during step {step}, without saving; the newest "
                f"checkpoint {saved[-1][1].name} is intact; continue with: "
                f"{command('superpose', 'train', '--resume', run_dir)}")
    return (f"stopped at once by a second {name} during step {step}, before any checkpoint was saved; "
            "start it again in place with the command that started it "
            f"({command('superpose', 'train', '...', '--out', run_dir)})")


def non_finite_lines(out: dict, phase: Phase, step: int, weights_ok: bool) -> tuple[str, str]:
    """What a NaN or Inf in step `step`'s loss or gradients says (the update was not applied):
    the log line (step, phase, LR, the tensors with bad gradients) and the place, for the error."""
    bad = out["bad_grads"]
    where = f"step {step} (phase {phase.index}, s={phase.bag_size}, lr {out['lr']:.3g})"
    grads = (f"non-finite gradients in {len(bad)} tensors: {', '.join(bad[:4])}{', ...' if len(bad) > 4 else ''}"
             if bad else "all gradients finite")
    return (f"non-finite at {where}: loss {out['loss']}, grad_norm {out['grad_norm']}; {grads}; weights "
            f"{'all finite' if weights_ok else 'NOT finite'}; the update was not applied"), where


def non_finite_error(out: dict, where: str, run_dir: Path, optim) -> UserError:
    """train.on_nan=stop: the one-line error, saying what was kept and how to go on."""
    found = checkpoints(run_dir)
    fix = nan_advice(optim)
    kept = (f"the last checkpoint {found[-1][1].name} is untouched; {fix} in a new run, or resume with "
            "--train.on_nan=skip to drop such batches"
            if found else f"no checkpoint was written; {fix}, or set --train.on_nan=skip to drop such batches")
    return UserError(f"loss is {out['loss']} and grad_norm {out['grad_norm']} at {where}; stopped before the "
                     f"update, {kept}")


def interrupted(signum: int, step: int, path: Path, run_dir: Path, distributed: bool) -> Interrupted:
    """The first SIGINT/SIGTERM, after the step it let finish and the checkpoint it saved."""
    name = signal.Signals(signum).name
    again = "torchrun --nproc_per_node N -m superpose" if distributed else "superpose"
    return Interrupted(signum, f"stopped by {name} after step {step - 1}; saved {path}; continue with: "
                       f"{again} {command('train', '--resume', run_dir)}")


class StopSignals:
    """Within the block, SIGINT and SIGTERM only set `signum` (the loop saves and stops after the
    current step); a second one raises `Interrupted` at once (`on_repeat` words its message). The previous
    handlers come back on exit. Outside the main thread signals cannot be caught, and nothing is installed.

    abort_on_repeat=False (under torchrun) ignores repeats: a rank gets the scheduler's signal
    and torchrun's forwarded one, and must still save; torchrun's SIGKILL after its
    --shutdown-timeout is the hard stop there."""

    def __init__(self, abort_on_repeat: bool = True, on_repeat: Callable[[int], str] | None = None):
        self.abort_on_repeat, self.on_repeat = abort_on_repeat, on_repeat

    def __enter__(self) -> StopSignals:
        self.signum, self.previous = None, {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            if self.abort_on_repeat:  # exit 128 + this signal's number, as the first one would give
                raise Interrupted(signum, self.on_repeat(signum) if self.on_repeat else
                                  f"stopped at once by a second {signal.Signals(signum).name}, without saving")
            return
        self.signum = signum  # no printing here: the handler may interrupt a print on the same stream

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
