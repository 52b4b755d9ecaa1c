"""The run around `Trainer.step_once`: `run` begins a trainer and steps it to the end, saving
checkpoints every `checkpoint.every` steps and `checkpoint.every_minutes`; it stops early on
SIGINT/SIGTERM (`StopSignals`) or a NaN or Inf (`stop_or_skip`), each with a one-line message
saying what was kept and how to go on."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ..config import nan_advice
from ..core.schedule import Phase
from ..errors import Interrupted, UserError, command
from .checkpoint import checkpoints
from .checkpointer import save_final
from .distributed import weights_finite
from .metrics import run_summary


_clock = time.monotonic  # the wall clock of checkpoint.every_minutes (a test replaces it)


def run(t, progress: bool = True) -> dict:
    """t.begin, t.step_once until the end, t.finish; returns the run summary. t: the `Trainer`.

    SIGINT/SIGTERM let the current step finish, save a checkpoint and raise `Interrupted`; a
    second signal stops at once, without saving (the last checkpoint stays as it was).
    """
    steps, every = t.cfg.train.steps, t.cfg.checkpoint.every
    minutes = t.cfg.checkpoint.every_minutes
    t.begin(progress)
    last_save = _clock()

    def on_repeat(signum: int) -> str:  # the step a second signal interrupts
        return stopped_at_once(t.run_dir, t.state.step, signum)

    with StopSignals(abort_on_repeat=not t.par.distributed, on_repeat=on_repeat) as stop:
        try:
            while t.state.step < steps:
                t.step_once()
                # Wall time as well as steps: a run whose steps are slow (or whose every=0)
                # never loses more than `every_minutes` of work. Ranks agree on the decision.
                late = minutes > 0 and _clock() - last_save >= 60 * minutes
                if t.par.distributed and minutes > 0:
                    late = bool(t.par.max_int(int(late)))
                if every and t.state.step % every == 0:
                    t.save_checkpoint()
                    last_save = _clock()
                elif late and t.state.step < steps:  # at the end the final model follows at once
                    t.save_checkpoint(reason="every_minutes")
                    last_save = _clock()
                # Ranks may see a signal at different steps; they agree to stop after the same one.
                signum = t.par.max_int(stop.signum or 0)
                if signum and t.state.step < steps:
                    name = signal.Signals(signum).name
                    path = t.save_checkpoint(reason=name)
                    again = "torchrun --nproc_per_node N -m superpose" if t.par.distributed else "superpose"
                    raise Interrupted(signum, f"stopped by {name} after step {t.state.step - 1}; saved "
                                      f"{path}; continue with: {again} {command('train', '--resume', t.run_dir)}")
        except BaseException:
            t.bar.close()
            t.metrics.close()
            raise
        return t.finish()


def finish(t) -> dict:
    """Close the log, save the final model and summary.json; returns the summary. t: the `Trainer`."""
    t.bar.close()
    t.metrics.close()
    summary = run_summary(t)
    save_final(t, summary)
    t.log(f"done: val_loss {summary['val_loss']:.4f}, val_bpb {summary['val_bpb']:.4f}, "
          f"{summary['wall_s']:.0f}s; model in {t.run_dir}")
    t.par.barrier()  # no rank leaves before rank 0 has written the model
    return summary


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


def stop_or_skip(t, phase: Phase, out: dict) -> None:
    """What a NaN or Inf in a step's loss or gradients does (the update was not applied): log the
    step, phase, LR and the tensors with bad gradients, then stop with a UserError
    (train.on_nan=stop) or count the dropped batch (skip). t: the `Trainer`."""
    bad, step = out["bad_grads"], t.state.step
    weights_ok = t.par.all_true(weights_finite(t.model))
    where = f"step {step} (phase {phase.index}, s={phase.bag_size}, lr {out['lr']:.3g})"
    grads = (f"non-finite gradients in {len(bad)} tensors: {', '.join(bad[:4])}{', ...' if len(bad) > 4 else ''}"
             if bad else "all gradients finite")
    t.log(f"non-finite at {where}: loss {out['loss']}, grad_norm {out['grad_norm']}; {grads}; weights "
          f"{'all finite' if weights_ok else 'NOT finite'}; the update was not applied")
    t.metrics.write({"type": "non_finite", "step": step, "phase": phase.index, "bag_size": phase.bag_size,
                     "loss": str(out["loss"]), "grad_norm": str(out["grad_norm"]), "lr": out["lr"],
                     "bad_grads": bad, "action": t.cfg.train.on_nan})
    if t.cfg.train.on_nan == "skip":
        t.state.skipped_steps += 1
        t.log(f"step {step}: batch skipped (train.on_nan=skip), {t.state.skipped_steps} skipped so far")
        return
    found = checkpoints(t.run_dir)
    fix = nan_advice(t.cfg.optim)
    kept = (f"the last checkpoint {found[-1][1].name} is untouched; {fix} in a new run, or resume with "
            "--train.on_nan=skip to drop such batches"
            if found else f"no checkpoint was written; {fix}, or set --train.on_nan=skip to drop such batches")
    raise UserError(f"loss is {out['loss']} and grad_norm {out['grad_norm']} at {where}; stopped before the "
                    f"update, {kept}")


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
