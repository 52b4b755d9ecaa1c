"""Re-measure the best TST regime the crossover study found, and fail if its gain regressed.

Not part of CI (it trains for tens of minutes). It reads a recorded length scan (report.json of
`superpose compare --steps ...`), reruns the same configuration (same preset fields, lengths,
seeds, baseline lengths) on the default corpus or --data, and compares, length by length:

    regression at a length  <=>  new mean + new 95% half-interval  <  recorded mean - recorded 95% half-interval

i.e. the two 95% intervals do not overlap and the new one is lower. Seed noise alone rarely does
that; a change that costs TST a few hundredths of a nat at the lengths where it is measured to
be closest to the baseline does. Exit 0: no regression; 1: regression; 2: bad arguments.

    nice -n 19 .venv/bin/python benchmarks/crossover_guard.py \
        --record benchmarks/records/crossover_cpu-small_2026-11-29/scan-torch/report.json --out runs/guard
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from common import ROOT  # noqa: F401  (puts the checkout on sys.path)

from superpose.experiments.baselines import parse_baselines
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--record", type=Path, required=True, help="report.json of the recorded length scan")
    ap.add_argument("--out", type=Path, required=True, help="directory for the new scan")
    ap.add_argument("--data", default="", help="a prepared data directory (default: the default corpus)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: the recorded run's)")
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
        factors = tuple(recorded.get("baseline_factors", [1.0]))
        new = compare(cfg, a.out, recorded["seeds"], factors=factors, steps=steps, command=" ".join(sys.argv),
                      baselines=parse_baselines(";".join(recorded.get("baselines", []))))
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
