"""The arms of one compare seed: their configs and run directories, each built fresh or continued
from the checkpoint an interrupted compare left, and all stepped in lock-step.

    arm_config(cfg, seed, steps, bag_size, ratio)  an arm's config (the baseline: nothing of TST)
    tst_dir(cell, T, one_length)                   a TST arm's run directory (baselines: baseline_name)
    start_arm(cfg, run_dir, ds, log)               its trainer: new, or resumed from its newest
                                                   checkpoint, bit for bit as `train --resume`
    baseline_trunks(...)                           one baseline trunk per baseline, as long as the
                                                   longest length; the branches it took before an
                                                   interruption, continued
    lockstep(...)                                  one optimizer step per arm in turn until all are
                                                   done, each decay branch taken off its trunk at
                                                   its decay start, checkpoints as a run saves them

compare.py decides which arms a seed has and reads their results; this module runs them.
"""

from __future__ import annotations

import copy
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .. import checkpoint
from ..config import Config
from ..errors import Interrupted, UserError
from ..files import copy_file
from ..training import Trainer, build_trainer
from ..training.resume import check_resumable
from ..training.stops import StopSignals
from .baselines import Variant, apply_variant, baseline_name


@dataclass
class Run:
    """One arm in the lock-step: its run directory's name under the seed's folder, and its trainer."""

    name: str
    trainer: Trainer


def arm_config(cfg: Config, seed: int, steps: int, bag_size: int, ratio: float) -> Config:
    """The compare's config for one arm: its seed, length and TST settings (ratio 0 or bag size 1:
    the baseline, with no TST setting left, a curriculum included)."""
    c = copy.deepcopy(cfg)
    c.train.seed, c.train.steps, c.tst.bag_size, c.tst.ratio = seed, steps, bag_size, ratio
    if ratio == 0 or bag_size == 1:  # the baseline: nothing of TST, curriculum included
        c.tst = type(c.tst)(bag_size=1, ratio=0.0)
    return c.validate()


def start_arm(cfg: Config, run_dir: Path, ds, log: Callable[[str], None]) -> Trainer:
    """An arm of a seed, continued from its newest checkpoint when an interrupted compare left one
    (bit for bit, as `train --resume`); an arm that saved nothing is started again from scratch."""
    if not checkpoint.checkpoints(run_dir):
        shutil.rmtree(run_dir, ignore_errors=True)
        return build_trainer(cfg, run_dir, ds, log)
    ckpt = checkpoint.newest(run_dir)
    check_resumable(ckpt, run_dir, cfg, ds)  # an arm of other settings: one line, nothing touched
    t = build_trainer(cfg, run_dir, ds, log)
    t.resume_from(ckpt)
    return t


def tst_dir(cell: Variant | None, T: int, one_length: bool) -> str:
    """The run directory of a TST arm: tst (one length, the compare's own TST config), tst-T (a
    length scan), tst-<cell> and tst-<cell>-T for the cells of --tst-grid."""
    name = "tst" if cell is None else f"tst-{cell.slug}"
    return name if one_length else f"{name}-{T}"


def quiet(_: str) -> None:
    """The log of the arms that are not the one TST run: their lines would interleave unreadably."""


def baseline_trunks(cfg: Config, out: Path, seed: int, lengths: list[int], ds, variants: list[Variant],
                     runs: list[Run]) -> dict[Trainer, tuple[Variant | None, dict[int, int]]]:
    """One baseline trunk per baseline (None: the compare's own config) as long as the longest of
    `lengths`, each with the trunk steps where its shorter lengths branch off (trunk step ->
    branch length). Appends the trunks, and branches already taken before an interruption, to
    `runs`."""
    trunk_steps, decay = lengths[-1], cfg.optim.decay_frac
    trunks = {}
    for v in [None, *variants]:
        vcfg = apply_variant(arm_config(cfg, seed, trunk_steps, 1, 0.0), v)
        trunk = start_arm(vcfg, out / baseline_name(v, trunk_steps), ds, quiet)
        branch_at = {n - round(decay * n): n for n in lengths[:-1]}  # trunk step -> branch length
        for b in sorted(b for b in branch_at if b < trunk.state.step):  # branched before an interruption
            n = branch_at.pop(b)
            bdir = out / baseline_name(v, n)
            if not checkpoint.checkpoints(bdir):
                raise UserError(f"{bdir} lacks the checkpoint its trunk branched it with; remove {out} and run the "
                                "same command again to train this seed anew")
            runs.append(Run(baseline_name(v, n), start_arm(apply_variant(arm_config(cfg, seed, n, 1, 0.0), v), bdir, ds,
                                                       quiet)))
        trunks[trunk] = (v, branch_at)
        runs.append(Run(baseline_name(v, trunk_steps), trunk))
    return trunks


def lockstep(cfg: Config, out: Path, seed: int, runs: list[Run], trunks: dict, ds,
              log: Callable[[str], None]) -> dict[str, Trainer]:
    """Step every run of a seed one step at a time, round by round, branching each decay branch off
    its trunk when the trunk reaches its branch step, saving checkpoints as a run would, and
    saying the progress every 30 s. Returns the finished trainers by run name.

    SIGINT/SIGTERM let the round finish, save every unfinished arm's checkpoint and raise
    `Interrupted` (the compare around it says how to go on); a second one stops at once, leaving
    the arms' newest checkpoints as they were."""
    for run in runs:
        run.trainer.begin(progress=False)
    finished: dict[str, Trainer] = {}
    t0 = time.time()
    # Steps still to go: each run's own, and each branch not yet taken (it runs from its branch point).
    total_steps = (sum(run.trainer.cfg.train.steps - run.trainer.state.step for run in runs)
                   + sum(n - b for _, branch_at in trunks.values() for b, n in branch_at.items()))
    done_steps, last_log = 0, time.time()
    every, minutes, last_save = cfg.checkpoint.every, cfg.checkpoint.every_minutes, time.time()

    def on_repeat(signum: int) -> str:
        return (f"stopped at once by a second {signal.Signals(signum).name} during seed {seed}, without saving; "
                f"the arms' newest checkpoints in {out} are intact")

    with StopSignals(on_repeat=on_repeat) as stop:
        while runs:
            for run in list(runs):
                t = run.trainer
                if t in trunks and t.state.step in trunks[t][1]:
                    v, branch_at = trunks[t]
                    runs.append(_branch(cfg, out, seed, t, v, branch_at.pop(t.state.step), ds))
                if t.state.step < t.cfg.train.steps:
                    t.step_once()
                    done_steps += 1
                    if every and t.state.step % every == 0 or t.state.step == t.cfg.train.steps:
                        t.save_checkpoint()  # at the end too: an interrupted compare then re-steps nothing of it
                if t.state.step == t.cfg.train.steps:
                    t.finish()
                    finished[run.name] = t
                    runs.remove(run)
            late = minutes > 0 and time.time() - last_save >= 60 * minutes
            if (late or stop.signum) and runs:  # a round's arms, saved together
                reason = signal.Signals(stop.signum).name if stop.signum else "every_minutes"
                for run in runs:
                    run.trainer.save_checkpoint(reason=reason)
                last_save = time.time()
            if stop.signum:  # after a whole round (the arms stay in lock-step), even the seed's last
                raise Interrupted(stop.signum, f"stopped by {signal.Signals(stop.signum).name} during seed {seed}; "
                                  f"its arms saved checkpoints in {out}")
            if time.time() - last_log > 30 or not runs:
                last_log = time.time()
                eta = (last_log - t0) / max(done_steps, 1) * (total_steps - done_steps)
                log(f"compare: seed {seed}: {done_steps}/{total_steps} steps of all runs, {last_log - t0:.0f}s, "
                    f"eta {eta:.0f}s")
    return finished


def _branch(cfg: Config, out: Path, seed: int, trunk: Trainer, v: Variant | None, n: int, ds) -> Run:
    """The decay branch of length `n` off `trunk` at its current step: a trainer built from the
    trunk's whole state (weights, optimizer, run state, data position, RNG), begun and saved."""
    bcfg = apply_variant(arm_config(cfg, seed, n, 1, 0.0), v)
    bdir = out / baseline_name(v, n)
    shutil.rmtree(bdir, ignore_errors=True)  # begun before an interruption the trunk did not outlive
    branch = build_trainer(bcfg, bdir, ds, quiet, state=copy.deepcopy(trunk.state_dict()))
    branch.run_dir.mkdir(parents=True, exist_ok=True)
    # The branch's log starts with the trunk's history: it is the full run of that length.
    copy_file(trunk.run_dir / "metrics.jsonl", branch.run_dir / "metrics.jsonl",
              fix="free some space and run the same command again: finished seeds are kept")
    branch.begin(progress=False)
    branch.save_checkpoint()  # so an interrupted compare can continue it without its trunk
    return Run(baseline_name(v, n), branch)
