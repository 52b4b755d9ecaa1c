"""Re-measure a recorded TST comparison, and fail if its gain regressed.

Not part of CI (it trains for tens of minutes to hours). It reads a recorded compare (report.json
of `superpose compare --steps ...`, with or without --baselines and a --tst-grid), reruns the same
configuration (same preset fields, lengths, seeds, baseline lengths, baselines and TST cells) on
the default corpus or --data, and compares, length by length:

    regression at a length  <=>  new mean + new 95% half-interval  <  recorded mean - recorded 95% half-interval

i.e. the two 95% intervals do not overlap and the new one is lower. Seed noise alone rarely does
that; a change that costs TST a few hundredths of a nat at the lengths where it is measured to
be closest to the baseline does. Exit 0: no regression; 1: regression; 2: bad arguments.

    nice -n 19 .venv/bin/python benchmarks/crossover_guard.py \
        --record benchmarks/records/crossover_cpu-small_2026-11-29/scan-torch/report.json --out runs/guard

The tuned record (issue 30) is 8 seeds of 12,000 steps with the baseline also decayed at 15,000
and 18,000: `--seeds 3 --gain-only --threads 2` reruns its first 3 seeds with the baseline at
12,000 steps only (the gain, not the speedup; each seed is README's main job: about 50 minutes on
2 idle cores), against the recorded interval; fewer seeds give a wider interval, so only a larger
regression shows.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from common import ROOT  # noqa: F401  (puts the checkout on sys.path)

from superpose.experiments.baselines import Variant, parse_baselines, parse_grid
from superpose.experiments.compare import compare
from superpose.config import Config
from superpose.errors import UserError
from superpose.training import resolve_data


GAINS = {"equal_steps_loss_gain": "gain", "best_baseline_gain": "gain vs the best baseline"}


def regressions(recorded: dict, new: dict) -> list[str]:
    """One line per length and gain (against the own baseline, and against the best baseline when
    the record has --baselines) whose new interval lies wholly below the recorded one."""
    out = []
    for key, label in GAINS.items():
        old = {ln["steps"]: ln[key] for ln in recorded["lengths"] if key in ln}
        for ln in new["lengths"]:
            o, n = old.get(ln["steps"]), ln.get(key)
            if o is None or n is None:
                continue
            if n["mean"] + n["ci95"] < o["mean"] - o["ci95"]:
                out.append(f"{ln['steps']} steps: {label} {n['mean']:+.4f} ± {n['ci95']:.4f} now, "
                           f"{o['mean']:+.4f} ± {o['ci95']:.4f} recorded")
    return out


def tst_cells(recorded: dict) -> list[Variant]:
    """The recorded --tst-grid cells (none without one), each from its name "optim.lr=1e-3,model.init=normal":
    a one-cell grid "optim.lr=1e-3;model.init=normal", parsed and checked as compare parses --tst-grid."""
    names = list((recorded.get("tst_grid") or {}).get("cells", {}))
    return [cell for n in names for cell in parse_grid(n.replace(",", ";"), "--tst-grid", tst=True)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--record", type=Path, required=True, help="report.json of the recorded length scan")
    ap.add_argument("--out", type=Path, required=True, help="directory for the new scan")
    ap.add_argument("--data", default="", help="a prepared data directory (default: the default corpus)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: the recorded run's)")
    ap.add_argument("--seeds", type=int, default=0, help="rerun only the first N recorded seeds (default: all)")
    ap.add_argument("--gain-only", action="store_true",
                    help="the baseline at the recorded lengths only, not its longer branches (no speedup)")
    a = ap.parse_args()
    try:
        recorded = json.loads(a.record.read_text())
        if "lengths" not in recorded or "config" not in recorded:
            raise UserError(f"{a.record} is not a compare report (no lengths/config)")
        cfg = Config.from_dict(recorded["config"])
        cfg.data.path = a.data
        if a.threads:
            cfg.train.threads = a.threads
        cfg.data.path = str(resolve_data(cfg).path)  # prepares the default corpus on first use
        cfg.validate()
        steps = [ln["steps"] for ln in recorded["lengths"]]
        factors = (1.0,) if a.gain_only else tuple(recorded.get("baseline_factors", [1.0]))
        seeds = recorded["seeds"]
        if not 0 <= a.seeds <= len(seeds):
            raise UserError(f"--seeds {a.seeds}: the record has {len(seeds)} seeds; give 1 to {len(seeds)}, or 0 for all")
        seeds = seeds[:a.seeds or len(seeds)]
        new = compare(cfg, a.out, seeds, factors=factors, steps=steps, command=" ".join(sys.argv),
                      baselines=parse_baselines(";".join(recorded.get("baselines", []))), tst_grid=tst_cells(recorded))
    except (UserError, OSError, json.JSONDecodeError) as e:
        print(f"crossover_guard: {e}", file=sys.stderr)
        return 2
    bad = regressions(recorded, new)
    for ln in new["lengths"]:
        for key, label in GAINS.items():
            if ln.get(key) and len(ln.get("baselines_val_loss", {"own": 0})) > (key != "equal_steps_loss_gain"):
                g = ln[key]
                print(f"crossover_guard: {ln['steps']} steps: {label} {g['mean']:+.4f} ± {g['ci95']:.4f} (95%)")
    if bad:
        print("crossover_guard: REGRESSION: " + "; ".join(bad))
        return 1
    print("crossover_guard: no regression against " + str(a.record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
