"""What `superpose compare` concludes from its seeds: per length, the statistics over paired seeds
(equal-steps gain, iso-loss speedup, the gain against the best baseline, phase 1's loss against the
unigram plateau, data per arm), the scan's trend and crossover, and the verdict lines.

    summarize(cfg, per_seed, lengths, command)   one length's report.json
    summarize_scan(cfg, subs, per_seed, command) the scan's report.json over every length
    verdicts(rep), scan_verdicts(rep)            the lines compare prints and report.md leads with
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from ..config import Config
from ..training.metrics import environment
from .baselines import OWN, Variant, best_baseline, grid_edges
from .stats import clear_of_noise, crossover, speedup_text, stats

PHASE1_TAIL = 50
"""Phase-1 training steps averaged for the loss at the switch (one step's loss is noisy)."""


def data_unigram_entropy(cfg: Config) -> float | None:
    """The unigram entropy (nats) of the run's data directory, which the multi-hot loss of a model
    that learned no context sits at (measured by prepare, or now); None for a mixture."""
    if cfg.data.mix or not cfg.data.path:
        return None
    from ..data.mutual_info import unigram_entropy

    return unigram_entropy(Path(cfg.data.path))


STAT_KEYS = ("equal_steps_loss_gain", "iso_loss_speedup", "iso_loss_step_ratio", "equal_steps_time_ratio")
BEST_ISO_KEYS = ("best_baseline_iso_loss_speedup", "best_baseline_iso_loss_step_ratio", "best_baseline_iso_loss_kinds")


def length_summary(sub: dict) -> dict:
    """One length's statistics, as the scan's report lists them."""
    return {"steps": sub["config"]["train"]["steps"], **{k: sub[k] for k in STAT_KEYS},
            "iso_loss_kinds": sub["iso_loss_kinds"], "tst_val_loss": sub["arms"]["tst"]["val_loss"],
            "baseline_val_loss": sub["arms"]["baseline"][str(sub["config"]["train"]["steps"])]["val_loss"],
            "best_baseline": sub["best_baseline"], "best_baseline_gain": sub["best_baseline_gain"],
            "baselines_val_loss": sub["baselines_val_loss"], "phase1_loss_at_switch": sub["phase1_loss_at_switch"],
            **{k: sub[k] for k in ("tst_grid", "tst_grid_edges", "baseline_grid_edges") if k in sub},
            **{k: sub[k] for k in BEST_ISO_KEYS if k in sub},
            "unigram_entropy": sub["unigram_entropy"], "data_per_arm": sub["data_per_arm"],
            "verdicts": sub["verdicts"]}


def summarize_scan(cfg: Config, subs: list[dict], per_seed: dict, command: str) -> dict:
    seeds = sorted(per_seed)
    lengths = [length_summary(sub) for sub in subs]
    gains = {k: [(int(T), per_seed[k]["by_steps"][str(T)]["equal_steps_loss_gain"]) for T in
                 [ln["steps"] for ln in lengths]] for k in seeds}
    rep = {"config": cfg.to_dict(), "command": command, "seeds": seeds, "steps": [ln["steps"] for ln in lengths],
           "lengths": lengths, "crossover": crossover(gains), "environment": environment(),
           "date": time.strftime("%Y-%m-%d")}
    if len(lengths[0]["baselines_val_loss"]) > 1:  # --baselines: the trend of the gain a user would see
        # best_baseline_gain's values are in sorted seed order, as `seeds`.
        best = {k: [(ln["steps"], ln["best_baseline_gain"]["values"][i]) for ln in lengths] for i, k in enumerate(seeds)}
        rep["best_crossover"] = crossover(best)
    rep["verdicts"] = scan_verdicts(rep)
    return rep


def scan_verdicts(rep: dict) -> list[str]:
    lines = []
    for ln in rep["lengths"]:
        g = ln["equal_steps_loss_gain"]
        lines += [f"{ln['steps']} steps: {line}" for line in grid_verdicts(ln)]
        lines.append(f"{ln['steps']} steps: gain {g['mean']:+.4f} nats ({clear_of_noise(g, 0.0)})")
        if len(ln.get("baselines_val_loss", {})) > 1:
            b = ln["best_baseline_gain"]
            lines.append(f"{ln['steps']} steps: gain against the best baseline ({ln['best_baseline']}) "
                         f"{b['mean']:+.4f} nats ({clear_of_noise(b, 0.0)})")
    lines += trend_lines(rep["crossover"], rep["steps"][-1], "")
    if rep.get("best_crossover"):
        lines += trend_lines(rep["best_crossover"], rep["steps"][-1], " against the best baseline")
    return lines


def trend_lines(c: dict, longest: int, against: str) -> list[str]:
    """The fitted trend of a gain with length, and where it crosses zero, as verdict lines."""
    slope = f"{c['b_per_decade']:+.3f} nats per 10x length"
    if not math.isnan(c["b_ci95"]):
        slope += f" (95% interval {c['b_per_decade'] - c['b_ci95']:+.3f} to {c['b_per_decade'] + c['b_ci95']:+.3f})"
    lines = [f"trend: the gain{against} changes by {slope}"]
    if c["estimate_steps"] is None:
        turns = f" (it crosses zero downward at ~{10 ** (-c['a'] / c['b_per_decade']):,.0f} steps)" if c["b_per_decade"] < 0 else ""
        lines.append(f"crossover{against}: none predicted: the fitted gain does not grow with run length" + turns)
    else:
        ci = c["ci95_steps"]
        if ci is None:
            where = "no interval (one seed)" if c["seeds"] < 2 else "the band excludes zero everywhere searched"
        else:
            lo = "below the search range" if ci[0] is None else f"{ci[0]:,.0f}"
            hi = f"beyond {c['search_range_steps'][1]:,.0f} (unbounded)" if ci[1] is None else f"{ci[1]:,.0f}"
            where = f"95% interval {lo} to {hi} steps"
        est = c["estimate_steps"]
        reach = "inside the measured lengths" if est <= longest else f"{est / longest:.1f}x the longest length run"
        lines.append(f"crossover{against} (gain = 0) predicted at {est:,.0f} steps ({reach}); {where}")
    return lines


def summarize(cfg: Config, per_seed: dict, lengths: list[int], command: str, unigram_entropy: float | None = None,
              tst_grid: dict | None = None, tst_cells: list[Variant] = (), baselines: list[Variant] = ()) -> dict:
    """One length's report. `tst_grid` ({"best", "cells": {cell: loss stats}}): the TST cells of
    --tst-grid, `per_seed` then holds the best one's results; `tst_cells` and `baselines` are the
    grids' cells, for the edge check."""
    seeds = sorted(per_seed)
    res = [per_seed[k] for k in seeds]
    arms = {
        "tst": {k: stats([r["tst"][k] for r in res]) for k in ("val_loss", "val_bpb", "train_time_s", "tokens_seen")},
        "baseline": {str(n): {k: stats([next(b for b in r["baseline"] if b["steps"] == n)[k] for r in res])
                              for k in ("val_loss", "val_bpb", "train_time_s", "tokens_seen")} for n in lengths},
    }
    out = {
        "config": cfg.to_dict(), "command": command, "seeds": seeds, "steps": cfg.train.steps,
        "baseline_lengths": lengths, "arms": arms,
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
        **best_baseline(per_seed),
        "phase1_loss_at_switch": stats([r["tst"]["phase1_loss_at_switch"] for r in res]),
        **grid_summary(tst_grid, tst_cells, baselines, best_baseline(per_seed)["baselines_val_loss"]),
        "unigram_entropy": unigram_entropy,
        "data_per_arm": _data_per_arm(res),
        "environment": environment(),
        "date": time.strftime("%Y-%m-%d"),
    }
    out["verdicts"] = verdicts(out)
    return out


def grid_summary(tst_grid: dict | None, tst_cells: list[Variant], baselines: list[Variant], baseline_losses: dict
                 ) -> dict:
    """The tuning grids of a length: TST's cells and their best, and where either grid's best cell
    sits on the edge of a numeric axis (the grid should be widened there before it is trusted)."""
    out = {}
    if tst_grid:
        out["tst_grid"] = tst_grid
        out["tst_grid_edges"] = grid_edges({c: st["mean"] for c, st in tst_grid["cells"].items()}, list(tst_cells))
    grid = [v for v in baselines if v.source == "--baseline-grid"]
    if grid:
        out["baseline_grid_edges"] = grid_edges({k: st["mean"] for k, st in baseline_losses.items()}, grid)
    return out


def grid_verdicts(rep: dict) -> list[str]:
    """Which TST cell won, and a warning for each grid whose best cell is on its edge."""
    lines = []
    if "tst_grid" in rep:
        g = rep["tst_grid"]
        lines.append(f"TST is the best of {len(g['cells'])} --tst-grid cells: {g['best']} (mean final loss "
                     f"{g['cells'][g['best']]['mean']:.4f}; every cell in report.md)")
    for key, what in (("tst_grid_edges", "TST's"), ("baseline_grid_edges", "the baselines'")):
        if rep.get(key):
            lines.append(f"widen {what} grid: at its best cell " + "; ".join(rep[key]) + ", so the optimum may lie "
                         "outside it")
    return lines


def _data_per_arm(res: list[dict]) -> dict:
    """Tokens per parameter (all, non-embedding) and epochs of the corpus of each arm at this length
    (means over seeds: the counts are the same in every seed up to the loader's document order)."""
    T = res[0]["tst"]["steps"]
    arms = {"tst": [r["tst"] for r in res], OWN: [next(b for b in r["baseline"] if b["steps"] == T) for r in res]}
    for name in res[0].get("variants", {}):
        arms[name] = [r["variants"][name] for r in res]
    keys = ("tokens_seen", "epochs", "tokens_per_param", "tokens_per_param_non_embedding")
    return {arm: {k: sum(e[k] for e in entries) / len(entries) for k in keys if all(e.get(k) is not None for e in entries)}
            for arm, entries in arms.items()}


PLATEAU_BAND = 0.1
"""Nats around the unigram entropy that count as sitting on the plateau (a phase-1 loss's noise
over its last steps is a few hundredths on the default corpus)."""


def best_iso_text(rep: dict) -> str:
    """TST's iso-loss speedup against the best baseline, in wall clock and in steps, with its band
    (or why there is none: one seed, or a bound because TST's loss lay outside the baseline's lengths)."""
    sp, st, kinds = (rep["best_baseline_iso_loss_speedup"], rep["best_baseline_iso_loss_step_ratio"],
                     rep["best_baseline_iso_loss_kinds"])
    text = f"{speedup_text(sp, kinds)} in wall clock, {speedup_text(st, kinds)} in steps"
    if set(kinds) != {"interpolated"}:
        return text + ": a bound (TST's loss lies outside that baseline's lengths; add --baseline-lengths)"
    return text + (f" (95% interval {st['mean'] - st['ci95']:.2f}x to {st['mean'] + st['ci95']:.2f}x in steps)"
                   if st["n"] > 1 else " (one seed)")


def plateau_verdict(phase1_loss: float, entropy: float) -> str:
    """Where phase 1 ended relative to the unigram plateau (see `data.mutual_info.token_entropy`)."""
    if phase1_loss < entropy - PLATEAU_BAND:
        return "below the plateau, so phase 1 learned context"
    if phase1_loss <= entropy + PLATEAU_BAND:
        return "on the unigram plateau: phase 1 learned token frequencies only and has little to hand over"
    return "above the plateau: phase 1 ended before it had learned even the token frequencies"


def verdicts(rep: dict) -> list[str]:
    g, sp, st = rep["equal_steps_loss_gain"], rep["iso_loss_speedup"], rep["iso_loss_step_ratio"]
    n = g["n"]
    kinds = rep["iso_loss_kinds"]
    bounds = sorted(set(kinds) - {"interpolated"})
    # One seed has no spread: say so instead of printing "std nan".
    spread = (f"mean over {n} seeds, std {g['std']:.4f}; per seed {', '.join(f'{v:+.4f}' for v in g['values'])}); "
              f"baseline seed-to-seed std {rep['baseline_seed_spread']:.4f}, TST {rep['tst_seed_spread']:.4f}"
              if n > 1 else "one seed)")
    lines = grid_verdicts(rep) + [
        f"equal steps: baseline - TST final val loss = {g['mean']:+.4f} nats ({'TST better' if g['mean'] > 0 else 'TST worse'}; "
        f"{spread}: {clear_of_noise(g, 0.0)}",
        f"iso-loss speedup in wall clock: {speedup_text(sp, kinds)} ("
        + (f"std {sp['std']:.2f}; per seed {', '.join(f'{v:.2f}' for v in sp['values'])}" if n > 1 else "one seed")
        + "): " + (clear_of_noise(sp, 1.0) if not bounds else "a bound, see below"),
        f"iso-loss ratio in steps: {speedup_text(st, kinds)}" + (f" (std {st['std']:.2f})" if n > 1 else ""),
    ]
    if len(rep.get("baselines_val_loss", {})) > 1:
        b = rep["best_baseline_gain"]
        lines.append(f"against the best baseline ({rep['best_baseline']}, lowest mean final loss of "
                     f"{len(rep['baselines_val_loss'])} baselines): {b['mean']:+.4f} nats "
                     f"({'TST better' if b['mean'] > 0 else 'TST worse'}"
                     + (f"; per seed {', '.join(f'{v:+.4f}' for v in b['values'])}" if n > 1 else "; one seed")
                     + f"): {clear_of_noise(b, 0.0)}")
        if "best_baseline_iso_loss_kinds" in rep:
            lines.append(f"iso-loss speedup against the best baseline ({rep['best_baseline']}): " + best_iso_text(rep))
    p1, h = rep.get("phase1_loss_at_switch"), rep.get("unigram_entropy")
    if p1 is not None:
        vs = "" if h is None else f" vs the data's unigram entropy {h:.3f}: " + plateau_verdict(p1["mean"], h)
        lines.append(f"phase 1 ended at multi-hot loss {p1['mean']:.3f} (training loss, last {PHASE1_TAIL} steps){vs}")
    data = rep.get("data_per_arm", {})
    if data:
        lines.append("data: " + "; ".join(
            f"{arm} {d['tokens_per_param_non_embedding']:.1f} tokens per non-embedding parameter "
            f"({d['tokens_per_param']:.2f} per parameter), {d.get('epochs', float('nan')):.2f} epochs"
            for arm, d in data.items()))
    if bounds:
        lines.append("some seeds fell outside the baseline lengths run (" + ", ".join(bounds) + "): the speedup "
                     "there is a bound, not a measurement (lower_bound: even the longest baseline did not reach "
                     "TST's loss, so the speedup is at least this; upper_bound: even the shortest beat it, so it "
                     "is at most this)")
    return lines
