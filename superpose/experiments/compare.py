"""`superpose compare`: TST against the matched-FLOPs baseline, at equal steps and at equal loss.

For each seed, the TST arm and the baseline (r = 0) start from the same initial weights and the
same data order, with the same model, batch, schedule and evaluation tokens. The baseline's loss
at a length is only ever read *after its LR decay*, at several lengths (by default 0.5x to 2x
the TST run's steps). WSD makes this cheap: the baseline's stable phase runs once (the "trunk",
as long as the longest length) and a decay branches off it at each shorter length's decay start.
A branch is bit for bit the straight baseline run of that length.

All runs of a seed advance in lock-step, one optimizer step each in turn, in one process, so a
slow spell of the machine hits every arm alike. Each run's wall clock is the time spent in its
own training steps (`train_time_s`), without evaluation. An interrupted compare continues: a
finished seed is read back from its result.json, the others' arms from their checkpoints
(arms.py runs the arms: their configs, directories, resume and the lock-step itself).

    equal_steps_loss_gain = baseline(1x) final val loss - TST final val loss
    iso_loss_speedup      = wall clock the decayed baseline needs to reach TST's final val loss,
                            interpolated linearly between lengths, / TST's wall clock
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path

from .. import checkpoint
from ..config import Config
from ..errors import UserError
from ..training import Trainer, resolve_data
from ..training.ownership import (EXPERIMENT_MARK, begin_experiment, check_experiment_dir, claim,
                                  experiment_advice, mark_experiment)
from .arms import Run, arm_config, baseline_trunks, lockstep, quiet, start_arm, tst_dir
from .baselines import Variant, apply_variant, baseline_name
from .fingerprint import check_same_config
from .stats import iso_loss, stats
from .summary import PHASE1_TAIL, data_unigram_entropy, length_summary, summarize, summarize_scan

DEFAULT_LENGTHS = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0)
_NEW_OUT = "use a new --out for other settings (finished seeds are reused only with the settings they were run with)"


def baseline_lengths(steps: int, factors: tuple[float, ...], decay_frac: float, warmup: int) -> list[int]:
    lengths = sorted({round(f * steps) for f in factors} | {steps})
    for n in lengths:
        if n - round(decay_frac * n) < warmup:
            raise UserError(f"baseline length {n} steps decays before its {warmup}-step warmup ends; drop the "
                            "shortest --baseline-lengths or lower --optim.warmup_steps")
    return lengths


def switch_evals(switch: int, eval_every: int, steps: int) -> set[int]:
    """Extra evaluation steps of a TST arm around its phase switch, so the curves show the jump and
    the recovery: the last phase-1 step, then 1, 2, 4, 8, ... steps into phase 2 until the next
    regular evaluation (or the end). Steps are 0-based, as in metrics.jsonl."""
    nxt = min(((switch // eval_every) + 1) * eval_every - 1, steps - 1) if eval_every else steps - 1
    out, k = {switch - 1}, 1
    while switch - 1 + k < nxt:
        out.add(switch - 1 + k)
        k *= 2
    regular = (lambda e: (e + 1) % eval_every == 0) if eval_every else (lambda e: False)
    return {e for e in out if 0 <= e < steps - 1 and not regular(e)}


def run_seed(cfg: Config, out: Path, seed: int, steps_list: list[int], factors: tuple[float, ...],
             log: Callable[[str], None], variants: list[Variant] = (), tst_cells: list[Variant] = ()) -> dict:
    """Train the TST arm of every length (of every --tst-grid cell) and, for the compare's own
    config and each baseline variant, one baseline trunk + decay branches, all in lock-step.

    A trunk runs at the stable LR as far as the longest baseline length any TST length needs; each
    shorter baseline length branches off it where its own decay starts, so every baseline length
    costs only its decay steps. -> {"by_steps": {str(T): result of length T}} for the compare's own
    TST config, or {"tst_cells": {str(T): {cell: result}}} with a TST grid."""
    decay = cfg.optim.decay_frac
    needs = {T: baseline_lengths(T, factors, decay, cfg.optim.warmup_steps) for T in steps_list}
    lengths = sorted(set().union(*needs.values()))
    ds = resolve_data(cfg)  # a data directory or a mixture (data.mix)
    one = len(steps_list) == 1
    cells = list(tst_cells) or [None]
    tsts = {(c, T): start_arm(apply_variant(arm_config(cfg, seed, T, cfg.tst.bag_size, cfg.tst.ratio), c),
                         out / tst_dir(c, T, one), ds, log if one and len(cells) == 1 else quiet)
            for c in cells for T in steps_list}
    for (_, T), t in tsts.items():  # see the jump at the switch and the recovery after it
        t.extra_evals = frozenset(switch_evals(t.schedule.switch_step, cfg.train.eval_every, T))
    runs = [Run(tst_dir(c, T, False), t) for (c, T), t in tsts.items()]
    trunks = baseline_trunks(cfg, out, seed, lengths, ds, variants, runs)
    finished = lockstep(cfg, out, seed, runs, trunks, ds, log)
    # Every length reads its iso-loss point off all the decayed baselines the seed trained, not only
    # its own multiples: they are the same runs.
    results = {str(T): {"" if c is None else c.name: _seed_result(finished, tsts[c, T], lengths, variants)
                        for c in cells} for T in steps_list}
    if tst_cells:
        return {"tst_cells": results, "baselines": [v.name for v in variants], "tst_grid": [c.name for c in cells]}
    return {"by_steps": {T: r[""] for T, r in results.items()}, "baselines": [v.name for v in variants]}


def _records(trainer: Trainer, kind: str) -> list[dict]:
    lines = (trainer.run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["type"] == kind]


def _arm_facts(t: Trainer) -> dict:
    """What a finished arm read: raw tokens, epochs of the corpus, tokens per parameter."""
    train = _records(t, "train")
    n_all, n_body = t.model.num_params(), t.model.num_params(non_embedding=True)
    return {"tokens_seen": t.state.tokens_seen, "epochs": train[-1].get("epoch") if train else None,
            "params": n_all, "params_non_embedding": n_body, "tokens_per_param": t.state.tokens_seen / n_all,
            "tokens_per_param_non_embedding": t.state.tokens_seen / n_body}


def _baseline_entry(t: Trainer, n: int) -> dict:
    return {"steps": n, "val_loss": t.state.last_eval["val_loss"], "val_bpb": t.state.last_eval["val_bpb"],
            "train_time_s": t.state.train_time_s, **_arm_facts(t)}


def _seed_result(finished: dict[str, Trainer], tst: Trainer, lengths: list[int], variants: list[Variant] = ()) -> dict:
    T = tst.cfg.train.steps
    switch_step = tst.schedule.switch_step
    tst_curve = _records(tst, "eval")
    train = _records(tst, "train")
    switch_time = next(e["train_time_s"] for e in train if e["step"] == switch_step - 1)
    phase1 = [e["loss"] for e in train if e["step"] < switch_step][-PHASE1_TAIL:]
    base = [_baseline_entry(finished[baseline_name(None, n)], n) for n in lengths]
    tst_loss, tst_time = tst.state.last_eval["val_loss"], tst.state.train_time_s
    equal = next(b for b in base if b["steps"] == T)
    others = {}
    for v in variants:  # each variant has the same decayed lengths as the own baseline: its own speedup
        vb = [_baseline_entry(finished[baseline_name(v, n)], n) for n in lengths]
        b = next(e for e in vb if e["steps"] == T)
        others[v.name] = {**b, "equal_steps_loss_gain": b["val_loss"] - tst_loss, **_iso(tst_loss, tst_time, T, vb)}
    return {
        "tst": {"steps": T, "val_loss": tst_loss, "val_bpb": tst.state.last_eval["val_bpb"], "train_time_s": tst_time,
                "switch_step": switch_step, "switch_time_s": switch_time, "curve": tst_curve,
                "phase1_loss_at_switch": sum(phase1) / len(phase1), **_arm_facts(tst)},
        "baseline": base,
        "baseline_curve": _records(finished[baseline_name(None, lengths[-1])], "eval"),
        "variants": others,
        "equal_steps_loss_gain": equal["val_loss"] - tst_loss,
        "equal_steps_time_ratio": equal["train_time_s"] / tst_time,
        **_iso(tst_loss, tst_time, T, base),
    }


def _iso(tst_loss: float, tst_time: float, T: int, base: list[dict]) -> dict:
    """Where one baseline's decayed lengths reach TST's final loss (linear interpolation between
    neighbouring lengths, or a bound outside them): the wall clock it needs over TST's, and its
    steps over TST's T."""
    t_iso, kind = iso_loss(tst_loss, [(b["train_time_s"], b["val_loss"]) for b in base])
    s_iso, _ = iso_loss(tst_loss, [(b["steps"], b["val_loss"]) for b in base])
    return {"iso_loss_speedup": t_iso / tst_time, "iso_loss_step_ratio": s_iso / T, "iso_loss_kind": kind}


def check_lengths(steps: list[int], cfg: Config, factors: tuple[float, ...]) -> None:
    """Refuse a length list the scan cannot use, naming the fix (UserError -> one line, exit 2)."""
    if not steps or any(b <= a for a, b in zip(steps, steps[1:])):
        raise UserError(f"--steps must be strictly increasing run lengths, e.g. 300,600,1200; got "
                        f"{','.join(map(str, steps))}")
    r, warmup = cfg.tst.ratio, cfg.optim.warmup_steps
    for T in steps:
        if round(r * T) < 1 or round(r * T) >= T:
            raise UserError(f"a {T}-step run gives phase 1 {round(r * T)} of its {T} steps at r={r}; each length "
                            "needs both phases: drop it from --steps or change --ratio")
        if T - round(cfg.optim.decay_frac * T) < warmup:
            raise UserError(f"a {T}-step run decays before its {warmup}-step warmup ends; drop {T} from --steps "
                            "or lower --optim.warmup_steps")
        baseline_lengths(T, factors, cfg.optim.decay_frac, warmup)  # raises for a decay before warmup ends


def compare(cfg: Config, out: Path, seeds: list[int], factors: tuple[float, ...] = DEFAULT_LENGTHS,
            command: str = "", log: Callable[[str], None] = print, steps: list[int] | None = None,
            baselines: list[Variant] = (), tst_grid: list[Variant] = ()) -> dict:
    """Run (or finish) every seed, then write report.json, report.md and the plots.

    `steps`: the TST run lengths to measure (default: cfg.train.steps alone). With several, each
    length gets its own report and plots under steps-T/, and the top level reports the gain as a
    function of length with the fitted trend and the crossover length.
    `baselines`: more baselines (`parse_baselines`), each one more trunk per seed in the same
    lock-step. Each length then also reports TST's gain against the best baseline: the one with
    the lowest mean final loss there, the compare's own config included.
    `tst_grid`: TST's own cells (`parse_grid`), each one more TST arm per seed and length; TST is
    then the cell with the lowest mean final loss at each length, tuned as hard as the baselines."""
    baselines, tst_grid = _distinct_baselines(cfg, baselines, log), list(tst_grid)
    steps = list(steps or [cfg.train.steps])
    _check_arms(cfg, steps, factors, baselines, tst_grid)
    # One writer per experiment directory: the arms' run directories, the seeds' results and the
    # reports are written under this lock (an OS lock, dropped by the kernel if we die).
    check_experiment_dir(out, "compare")  # new, empty or this compare's own: nothing else is written
    with claim(out, "compare directory", mine=(EXPERIMENT_MARK,)), experiment_advice("compare", out, command):
        begin_experiment(out, "compare", command)  # `train` keeps out of its arms from now on
        per_seed = {seed: _seed(cfg, out, seed, steps, factors, log, baselines, tst_grid) for seed in seeds}
        report = _write_reports(cfg, out, per_seed, steps, factors, command, baselines, tst_grid)
        mark_experiment(out, "compare", command)  # the command that finished it, quoted from now on
        for line in report["verdicts"]:
            log(f"compare: {line}")
        log(f"compare: report in {out / 'report.md'}" + (f", plots in {out}/loss_vs_*.png" if len(steps) == 1 else
                                                          f", gain vs length in {out / 'gain_vs_length.png'}"))
        return report


def _check_arms(cfg: Config, steps: list[int], factors: tuple[float, ...], baselines: list[Variant],
                tst_grid: list[Variant]) -> None:
    """Refuse, before anything runs, a compare without a TST arm or with a length some arm cannot
    use: every TST cell and baseline by the same rules, in one line."""
    for c in tst_grid or [None]:
        if apply_variant(cfg, c).build_schedule().switch_step == 0:
            raise UserError("compare needs a TST arm: set --bag-size >= 2 and --ratio > 0, or --tst.schedule (phase 1 "
                            f"must get >= 1 step){f'; --tst-grid cell {c.name} has none' if c else ''}")
    check_lengths(steps, cfg, factors)
    for v in [*tst_grid, *baselines]:
        apply_variant(cfg, v, lambda c: check_lengths(steps, c, factors))


def _seed(cfg: Config, out: Path, seed: int, steps: list[int], factors: tuple[float, ...],
          log: Callable[[str], None], baselines: list[Variant], tst_grid: list[Variant]) -> dict:
    """One seed's result: reused from its result.json when an earlier compare finished it (with
    the same settings), else run (its arms continued from their checkpoints) and written there."""
    from .report import tst_label, write_report

    seed_dir = out / f"seed-{seed}"
    done = seed_dir / "result.json"
    if done.is_file():
        result = _reuse(done, seed, steps, factors, baselines, tst_grid)
        # Steps are checked by _reuse, and each seed sets its own train.seed.
        check_same_config(result.get("config"), cfg, f"seed {seed}", done, _NEW_OUT,
                          ignore=("train.steps", "train.seed"))
        log(f"compare: seed {seed} already done, reusing {done}")
        return result
    if any(checkpoint.checkpoints(arm) for arm in seed_dir.glob("*/")):
        log(f"compare: seed {seed}: continuing its arms from their checkpoints in {seed_dir}")
    lengths = sorted(set().union(*(baseline_lengths(T, factors, cfg.optim.decay_frac, cfg.optim.warmup_steps)
                                   for T in steps)))
    extra = f" and {len(baselines)} more baseline(s) ({'; '.join(v.name for v in baselines)})" if baselines else ""
    log(f"compare: seed {seed}: TST ({tst_label(cfg.to_dict()['tst'])}) at {', '.join(map(str, steps))} "
        f"steps and the baseline at {', '.join(map(str, lengths))} steps (one trunk){extra}, in lock-step")
    result = {**run_seed(cfg, seed_dir, seed, steps, factors, log, baselines, tst_grid), "steps": steps,
              "factors": list(factors), "config": cfg.to_dict()}  # checked when it is reused
    write_report(done, json.dumps(result, indent=1) + "\n")
    return result


def _write_reports(cfg: Config, out: Path, per_seed: dict, steps: list[int], factors: tuple[float, ...],
                   command: str, baselines: list[Variant], tst_grid: list[Variant]) -> dict:
    """report.json, report.md and the plots: one set per length (under steps-T/ when there are
    several, with the gain-vs-length report on top). Returns the top-level report."""
    from .report import (plot_compare, plot_gain_vs_length, write_compare_markdown, write_report,
                         write_scan_markdown)

    seeds = list(per_seed)
    entropy = data_unigram_entropy(cfg)
    subs, chosen = [], {k: {"by_steps": {}} for k in seeds}  # each length's TST: the best --tst-grid cell
    for T in steps:
        cfg_T = copy.deepcopy(cfg)
        cfg_T.train.steps = T
        by_seed, grid = tst_cell_results(per_seed, seeds, T)
        for k in seeds:
            chosen[k]["by_steps"][str(T)] = by_seed[k]
        lengths = sorted({b["steps"] for k in seeds for b in by_seed[k]["baseline"]})
        sub = summarize(cfg_T, by_seed, lengths, command, entropy, grid, tst_grid, baselines)
        where = out if len(steps) == 1 else out / f"steps-{T}"
        where.mkdir(exist_ok=True)
        plot_compare(sub, by_seed, where)
        write_compare_markdown(sub, where / "report.md")
        subs.append(sub)
    if len(steps) == 1:
        report = subs[0]
        report["lengths"] = [length_summary(report)]
    else:
        report = summarize_scan(cfg, subs, chosen, command)
        plot_gain_vs_length(report, out / "gain_vs_length.png")
        write_scan_markdown(report, out / "report.md")
    report["baseline_factors"] = list(factors)
    report["baselines"] = [v.name for v in baselines]
    write_report(out / "report.json", json.dumps(report, indent=2) + "\n")
    return report


def _distinct_baselines(cfg: Config, variants: list[Variant], log: Callable[[str], None]) -> list[Variant]:
    """The baseline variants less the --baseline-grid cells that repeat the compare's own baseline
    or an earlier variant (a cell at the compare's own rate and init): the same run twice would
    only cost time. A --baselines variant is kept as given."""
    seen = [arm_config(cfg, 0, cfg.train.steps, 1, 0.0).to_dict()]
    out = []
    for v in variants:
        c = apply_variant(arm_config(cfg, 0, cfg.train.steps, 1, 0.0), v).to_dict()
        if c in seen and v.source == "--baseline-grid":
            log(f"compare: baseline {v.name} is {'the own baseline' if c == seen[0] else 'an earlier baseline'} "
                "already; run once")
            continue
        seen.append(c)
        out.append(v)
    return out


def tst_cell_results(per_seed: dict, seeds: list[int], T: int) -> tuple[dict, dict | None]:
    """Each seed's result at length T for TST's best cell (the lowest mean final loss over the
    seeds) and the grid's mean losses; without --tst-grid, the compare's one TST arm and None."""
    if "tst_cells" not in per_seed[seeds[0]]:
        return {k: per_seed[k]["by_steps"][str(T)] for k in seeds}, None
    cells = {k: per_seed[k]["tst_cells"][str(T)] for k in seeds}
    losses = {c: [cells[k][c]["tst"]["val_loss"] for k in seeds] for c in cells[seeds[0]]}
    best = min(losses, key=lambda c: sum(losses[c]))
    return {k: cells[k][best] for k in seeds}, {"best": best, "cells": {c: stats(v) for c, v in losses.items()}}


def _reuse(done: Path, seed: int, steps: list[int], factors: tuple[float, ...], baselines: list[Variant] = (),
           tst_grid: list[Variant] = ()) -> dict:
    """A finished seed's results, if it measured every requested length with the same baselines."""
    data = json.loads(done.read_text())
    if "by_steps" not in data and "tst_cells" not in data:  # a one-length compare from before length scans
        data = {"by_steps": {str(data["tst"]["steps"]): data}, "steps": [data["tst"]["steps"]]}
    have = sorted(int(T) for T in data.get("by_steps", data.get("tst_cells", {})))
    if not set(steps) <= set(have) or ("factors" in data and data["factors"] != list(factors)):
        raise UserError(f"seed {seed} in {done.parent.parent} was run with --steps {','.join(map(str, have))} and "
                        f"--baseline-lengths {','.join(map(str, data.get('factors', [])))}; rerun with those, or "
                        "use a new --out for other lengths")
    had = data.get("baselines", [])
    if had != [v.name for v in baselines]:
        raise UserError(f"seed {seed} in {done.parent.parent} was run with --baselines "
                        f"{';'.join(had) or '(none)'!r}; rerun with that, or use a new --out for other baselines")
    if data.get("tst_grid", []) != [c.name for c in tst_grid]:
        raise UserError(f"seed {seed} in {done.parent.parent} was run with TST cells "
                        f"{'; '.join(data.get('tst_grid', [])) or '(no --tst-grid)'}; rerun with that --tst-grid, or "
                        "use a new --out for other cells")
    return data
