"""`superpose compare`: TST against the matched-FLOPs baseline, at equal steps and at equal loss.

For each seed, the TST arm and the baseline (r = 0) start from the same initial weights and the
same data order, with the same model, batch, schedule and evaluation tokens. The baseline's loss
at a length is only ever read *after its LR decay*, at several lengths (by default 0.5x to 2x
the TST run's steps). WSD makes this cheap: the baseline's stable phase runs once (the "trunk",
as long as the longest length) and a decay branches off it at each shorter length's decay start.
A branch is bit for bit the straight baseline run of that length.

All runs of a seed advance in lock-step, one optimizer step each in turn, in one process, so a
slow spell of the machine hits every arm alike. Each run's wall clock is the time spent in its
own training steps (`train_time_s`), without evaluation.

    equal_steps_loss_gain = baseline(1x) final val loss - TST final val loss
    iso_loss_speedup      = wall clock the decayed baseline needs to reach TST's final val loss,
                            interpolated linearly between lengths, / TST's wall clock
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .config import Config
from .data import open_dataset
from .errors import UserError
from .training import Trainer, build_trainer
from .training.metrics import environment

DEFAULT_LENGTHS = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0)
# Two-sided 95% Student-t quantiles by degrees of freedom, for confidence intervals over seeds.
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
       15: 2.131, 20: 2.086, 30: 2.042}


def t95(df: int) -> float:
    return T95[max(k for k in T95 if k <= df)] if df >= 1 else math.nan


def stats(values: list[float]) -> dict:
    """mean, sample std, 95% half-interval over seeds, min, max, and the values."""
    a = np.asarray(values, dtype=float)
    n = len(a)
    std = float(a.std(ddof=1)) if n > 1 else math.nan
    return {"mean": float(a.mean()), "std": std, "ci95": t95(n - 1) * std / math.sqrt(n) if n > 1 else math.nan,
            "min": float(a.min()), "max": float(a.max()), "n": n, "values": [float(v) for v in a]}


def baseline_lengths(steps: int, factors: tuple[float, ...], decay_frac: float, warmup: int) -> list[int]:
    lengths = sorted({round(f * steps) for f in factors} | {steps})
    for n in lengths:
        if n - round(decay_frac * n) < warmup:
            raise UserError(f"baseline length {n} steps decays before its {warmup}-step warmup ends; drop the "
                            "shortest --baseline-lengths or lower --optim.warmup_steps")
    return lengths


def iso_loss(target: float, points: list[tuple[float, float]]) -> tuple[float, str]:
    """Where a decreasing curve of (x, loss) points reaches `target`, by linear interpolation
    between neighbours. -> (x, kind): kind "interpolated", or "lower_bound" when even the last
    point is above target (x is then the last x), or "upper_bound" when the first is already below."""
    pts = sorted(points)
    if target >= pts[0][1]:
        return pts[0][0], "upper_bound" if target > pts[0][1] else "interpolated"
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if y1 <= target <= y0:
            return (x0 + (y0 - target) / (y0 - y1) * (x1 - x0) if y0 != y1 else x0), "interpolated"
    return pts[-1][0], "lower_bound"


@dataclass
class _Run:
    name: str
    trainer: Trainer


def _arm_config(cfg: Config, seed: int, steps: int, bag_size: int, ratio: float) -> Config:
    c = copy.deepcopy(cfg)
    c.train.seed, c.train.steps, c.tst.bag_size, c.tst.ratio = seed, steps, bag_size, ratio
    return c.validate()


def run_seed(cfg: Config, out: Path, seed: int, lengths: list[int], log: Callable[[str], None]) -> dict:
    """Train the TST arm and the baseline trunk + decay branches of one seed in lock-step."""
    T, s, r = cfg.train.steps, cfg.tst.bag_size, cfg.tst.ratio
    ds = open_dataset(cfg.data.path)
    quiet = lambda m: None  # noqa: E731 - the baselines' own lines would interleave unreadably
    tst = build_trainer(_arm_config(cfg, seed, T, s, r), out / "tst", ds, log)
    trunk_steps = lengths[-1]
    trunk = build_trainer(_arm_config(cfg, seed, trunk_steps, 1, 0.0), out / f"baseline-{trunk_steps}", ds, quiet)
    decay = cfg.optim.decay_frac
    branch_at = {n - round(decay * n): n for n in lengths[:-1]}  # trunk step -> branch length
    runs = [_Run("tst", tst), _Run(f"baseline-{trunk_steps}", trunk)]
    for run in runs:
        run.trainer.begin(progress=False)
    finished: dict[str, Trainer] = {}
    t0, total_steps = time.time(), T + trunk_steps + sum(round(decay * n) for n in lengths[:-1])
    done_steps, last_log = 0, time.time()
    while runs:
        for run in list(runs):
            t = run.trainer
            if t is trunk and t.state.step in branch_at:
                n = branch_at.pop(t.state.step)
                # The trunk's whole state (weights, optimizer, run state, data position, RNG), copied.
                branch = build_trainer(_arm_config(cfg, seed, n, 1, 0.0), out / f"baseline-{n}", ds, quiet,
                                       state=copy.deepcopy(trunk.state_dict()))
                branch.run_dir.mkdir(parents=True, exist_ok=True)
                # The branch's log starts with the trunk's history: it is the full run of that length.
                shutil.copyfile(trunk.run_dir / "metrics.jsonl", branch.run_dir / "metrics.jsonl")
                branch.begin(progress=False)
                runs.append(_Run(f"baseline-{n}", branch))
            t.step_once()
            done_steps += 1
            if t.state.step == t.cfg.train.steps:
                t.finish()
                finished[run.name] = t
                runs.remove(run)
        if time.time() - last_log > 30 or not runs:
            last_log = time.time()
            eta = (last_log - t0) / done_steps * (total_steps - done_steps)
            log(f"compare: seed {seed}: {done_steps}/{total_steps} steps of all runs, {last_log - t0:.0f}s, "
                f"eta {eta:.0f}s")
    return _seed_result(finished, tst, lengths, s, r)


def _records(trainer: Trainer, kind: str) -> list[dict]:
    lines = (trainer.run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["type"] == kind]


def _seed_result(finished: dict[str, Trainer], tst: Trainer, lengths: list[int], s: int, r: float) -> dict:
    T = tst.cfg.train.steps
    switch_step = tst.schedule.switch_step
    tst_curve = _records(tst, "eval")
    switch_time = next(e["train_time_s"] for e in _records(tst, "train") if e["step"] == switch_step - 1)
    base = []
    for n in lengths:
        t = finished[f"baseline-{n}"]
        base.append({"steps": n, "val_loss": t.state.last_eval["val_loss"], "val_bpb": t.state.last_eval["val_bpb"],
                     "train_time_s": t.state.train_time_s, "tokens_seen": t.state.tokens_seen})
    tst_loss, tst_time = tst.state.last_eval["val_loss"], tst.state.train_time_s
    equal = next(b for b in base if b["steps"] == T)
    t_iso, kind = iso_loss(tst_loss, [(b["train_time_s"], b["val_loss"]) for b in base])
    s_iso, _ = iso_loss(tst_loss, [(b["steps"], b["val_loss"]) for b in base])
    return {
        "tst": {"steps": T, "val_loss": tst_loss, "val_bpb": tst.state.last_eval["val_bpb"], "train_time_s": tst_time,
                "tokens_seen": tst.state.tokens_seen, "switch_step": switch_step, "switch_time_s": switch_time,
                "curve": tst_curve},
        "baseline": base,
        "baseline_curve": _records(finished[f"baseline-{lengths[-1]}"], "eval"),
        "equal_steps_loss_gain": equal["val_loss"] - tst_loss,
        "equal_steps_time_ratio": equal["train_time_s"] / tst_time,
        "iso_loss_speedup": t_iso / tst_time,
        "iso_loss_step_ratio": s_iso / T,
        "iso_loss_kind": kind,
    }


def compare(cfg: Config, out: Path, seeds: list[int], factors: tuple[float, ...] = DEFAULT_LENGTHS,
            command: str = "", log: Callable[[str], None] = print) -> dict:
    """Run (or finish) every seed, then write report.json, report.md and the plots."""
    if cfg.tst.bag_size < 2 or cfg.tst.ratio <= 0 or round(cfg.tst.ratio * cfg.train.steps) == 0:
        raise UserError("compare needs a TST arm: set --bag-size >= 2 and --ratio > 0 (phase 1 must get >= 1 step)")
    lengths = baseline_lengths(cfg.train.steps, factors, cfg.optim.decay_frac, cfg.optim.warmup_steps)
    out.mkdir(parents=True, exist_ok=True)
    per_seed = {}
    for seed in seeds:
        seed_dir = out / f"seed-{seed}"
        done = seed_dir / "result.json"
        if done.is_file():
            log(f"compare: seed {seed} already done, reusing {done}")
            per_seed[seed] = json.loads(done.read_text())
            continue
        shutil.rmtree(seed_dir, ignore_errors=True)  # an interrupted seed restarts from scratch
        log(f"compare: seed {seed}: TST (s={cfg.tst.bag_size}, r={cfg.tst.ratio}) and the baseline at "
            f"{', '.join(map(str, lengths))} steps, in lock-step")
        per_seed[seed] = run_seed(cfg, seed_dir, seed, lengths, log)
        done.write_text(json.dumps(per_seed[seed], indent=1) + "\n")
    report = summarize(cfg, per_seed, lengths, command)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    from .report import plot_compare, write_compare_markdown

    plot_compare(report, per_seed, out)
    write_compare_markdown(report, out / "report.md")
    for line in report["verdicts"]:
        log(f"compare: {line}")
    log(f"compare: report in {out / 'report.md'}, plots in {out}/loss_vs_*.png")
    return report


def summarize(cfg: Config, per_seed: dict, lengths: list[int], command: str) -> dict:
    seeds = sorted(per_seed)
    res = [per_seed[k] for k in seeds]
    arms = {
        "tst": {k: stats([r["tst"][k] for r in res]) for k in ("val_loss", "val_bpb", "train_time_s", "tokens_seen")},
        "baseline": {str(n): {k: stats([next(b for b in r["baseline"] if b["steps"] == n)[k] for r in res])
                              for k in ("val_loss", "val_bpb", "train_time_s", "tokens_seen")} for n in lengths},
    }
    out = {
        "config": cfg.to_dict(), "command": command, "seeds": seeds, "baseline_lengths": lengths,
        "arms": arms,
        "equal_steps_loss_gain": stats([r["equal_steps_loss_gain"] for r in res]),
        "iso_loss_speedup": stats([r["iso_loss_speedup"] for r in res]),
        "iso_loss_step_ratio": stats([r["iso_loss_step_ratio"] for r in res]),
        "iso_loss_kinds": [r["iso_loss_kind"] for r in res],
        "equal_steps_time_ratio": stats([r["equal_steps_time_ratio"] for r in res]),
        "baseline_seed_spread": stats([next(b for b in r["baseline"] if b["steps"] == cfg.train.steps)["val_loss"]
                                       for r in res])["std"],
        "tst_seed_spread": arms["tst"]["val_loss"]["std"],
        "per_seed": {str(k): {key: per_seed[k][key] for key in ("equal_steps_loss_gain", "iso_loss_speedup",
                                                               "iso_loss_step_ratio", "iso_loss_kind")}
                     for k in seeds},
        "how_noise_is_controlled": (
            "per seed both arms start from the same initial weights and the same data order and are scored on the "
            "same validation tokens; all runs of a seed advance in lock-step (one optimizer step each in turn, one "
            "process), so machine noise hits every arm alike; wall clock is each run's own training-step time"),
        "environment": environment(),
        "date": time.strftime("%Y-%m-%d"),
    }
    out["verdicts"] = verdicts(out)
    return out


def _clear(st: dict, null: float) -> str:
    if st["n"] < 2 or math.isnan(st["std"]):
        return "cannot tell with one seed"
    lo, hi = st["mean"] - st["ci95"], st["mean"] + st["ci95"]
    side = "above" if lo > null else "below" if hi < null else None
    if side is None:
        return f"NOT clear of seed noise (95% interval {lo:.4g} to {hi:.4g} includes {null:g})"
    return f"clear of seed noise ({side} {null:g}; 95% interval {lo:.4g} to {hi:.4g})"


def verdicts(rep: dict) -> list[str]:
    g, sp, st = rep["equal_steps_loss_gain"], rep["iso_loss_speedup"], rep["iso_loss_step_ratio"]
    n = g["n"]
    bounds = sorted(set(rep["iso_loss_kinds"]) - {"interpolated"})
    lines = [
        f"equal steps: baseline - TST final val loss = {g['mean']:+.4f} nats ({'TST better' if g['mean'] > 0 else 'TST worse'}; "
        f"mean over {n} seeds, std {g['std']:.4f}; "
        f"per seed {', '.join(f'{v:+.4f}' for v in g['values'])}); baseline seed-to-seed std "
        f"{rep['baseline_seed_spread']:.4f}, TST {rep['tst_seed_spread']:.4f}: {_clear(g, 0.0)}",
        f"iso-loss speedup in wall clock: {sp['mean']:.2f}x (std {sp['std']:.2f}; per seed "
        f"{', '.join(f'{v:.2f}' for v in sp['values'])}): {_clear(sp, 1.0)}",
        f"iso-loss ratio in steps: {st['mean']:.2f}x (std {st['std']:.2f})",
    ]
    if bounds:
        lines.append("some seeds fell outside the baseline lengths run (" + ", ".join(bounds) + "): the speedup "
                     "there is a bound, not a measurement (lower_bound: even the longest baseline did not reach "
                     "TST's loss; upper_bound: even the shortest beat it)")
    return lines
