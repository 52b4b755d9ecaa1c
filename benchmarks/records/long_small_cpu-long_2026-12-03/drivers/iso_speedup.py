"""Iso-loss speedup of TST against its best baseline, per seed (section 3c of NOTES.md).

TST's 12,000-step final loss and the init=normal baseline's 12,000-step loss come from the
12,000-step compare (runs/scan12k/all/seed-K/result.json); the same baseline trained to 20,000 steps
(its own WSD decay) comes from `superpose train` (runs/iso/normal-20000/seed-K/summary.json, made by
drivers/drive_s5.sh). Where the baseline reaches TST's loss is interpolated linearly in steps
between the two lengths with compare's own `iso_loss`; steps / 12,000 is the speedup in steps.
A run's final loss falls more slowly the longer it runs (convex in steps), so the straight chord lies
above it and linear interpolation overstates the steps the baseline needs; interpolating linearly in
log(steps) instead, as if loss = a - b log(steps) between the two lengths, gives the smaller,
more conservative figure. Both are printed.

    .venv/bin/python benchmarks/records/long_small_cpu-long_2026-12-03/drivers/iso_speedup.py \
        runs/scan12k/all runs/iso/normal-20000 105 106 107 108 109
    # the second corpus: TST at 6,000 steps, its best baseline (own, init=torch) at 6,000 and 10,000
    ... iso_speedup.py runs/corpus2/all runs/iso/c2-own-10000 100 101 102 --steps 6000 --baseline own
"""
import argparse
import json
from pathlib import Path

from superpose.experiments.stats import iso_loss, stats

ap = argparse.ArgumentParser(description="TST's iso-loss speedup against one baseline, per seed")
ap.add_argument("scan", type=Path, help="a gathered compare folder with seed-K/result.json")
ap.add_argument("long", type=Path, help="the longer baseline runs, seed-K/summary.json")
ap.add_argument("seeds", type=int, nargs="+")
ap.add_argument("--steps", type=int, default=12000, help="TST's length in the compare")
ap.add_argument("--baseline", default="model.init=normal", help="'own' or a --baselines variant")
args = ap.parse_args()
scan, long, seeds, T, V = args.scan, args.long, args.seeds, args.steps, args.baseline
rows, ratios, log_ratios, gains = [], [], [], []
for k in seeds:
    r = json.loads((scan / f"seed-{k}" / "result.json").read_text())["by_steps"][str(T)]
    s = json.loads((long / f"seed-{k}" / "summary.json").read_text())
    own = next(b for b in r["baseline"] if b["steps"] == T)
    tst, b12, b20 = r["tst"]["val_loss"], (own if V == "own" else r["variants"][V])["val_loss"], s["val_loss"]
    x, kind = iso_loss(tst, [(T, b12), (s["steps"], b20)])
    ratios.append(x / T)
    # Same crossing on a log(steps) axis: the fraction of the way from b12 down to b20.
    log_ratios.append((s["steps"] / T) ** ((b12 - tst) / (b12 - b20)) if kind == "interpolated" else x / T)
    gains.append(b20 - tst)
    rows.append(f"| {k} | {tst:.4f} | {b12:.4f} | {b20:.4f} | {b20 - tst:+.4f} | {x:,.0f} ({kind}) | {x / T:.2f}x | {log_ratios[-1]:.2f}x |")
L = s["steps"]
print(f"| seed | TST, {T:,} steps | baseline {V}, {T:,} | same, {L:,} | {L:,}-step baseline - TST | "
      "baseline steps to TST's loss | speedup in steps | same, log-steps interpolation |")
print("|---|---|---|---|---|---|---|---|")
print("\n".join(rows))
for name, st in (("speedup in steps (x)", stats(ratios)), ("same, log-steps interpolation (x)", stats(log_ratios)),
                 (f"{L:,}-step baseline - TST (nats)", stats(gains))):
    print(f"\n{name}: {st['mean']:.3f} ± {st['std']:.3f} (95% {st['mean'] - st['ci95']:.3f} to "
          f"{st['mean'] + st['ci95']:.3f}), n = {st['n']}")
