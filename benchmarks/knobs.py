"""The knob screen: which setting moves TST's gain, and by how much (the crossover study's knobs,
issue 10, and the paper's ablations, issue 13: groups modes, loss, switch, weights8, curriculum).

Every cell is a pair of full runs of the same preset and seed: TST with the cell's overrides, and
the baseline (r = 0) with the same overrides minus the TST ones. Baselines that coincide (a cell
that only changes s or r) are trained once and shared. Each cell reports two gains, paired by
seed:

    gain vs own baseline  = baseline(cell's non-TST settings) - TST(cell)   what the knob does to TST
    gain vs best baseline = min over screened baselines of the mean loss - TST(cell)
                                                                             what a user could have

The second is the honest one: a knob that "helps TST" by handicapping the baseline shows up there.
Each run leaves `runs/NAME/summary.json` and is skipped when rerun, so an interrupted screen
resumes; several processes may share one --out: a run another process is training is skipped (each run is
locked while it trains), so two processes with overlapping --seeds share the work.

    nice -n 19 .venv/bin/python benchmarks/knobs.py --out runs/knobs --seeds 0 --groups init,sr \
        --set data.path=/tmp/spdata-4096 --set train.threads=1
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from common import ROOT  # noqa: F401  (puts the checkout on sys.path)

from superpose.experiments.stats import stats
from superpose.overrides import parse_overrides, set_field, set_fields
from superpose.presets import preset
from superpose.errors import UserError
from superpose.files import lock_dir
from superpose.training.metrics import environment
from superpose.experiments.sweep import run_cell

def is_tst_key(key: str) -> bool:
    """Settings of the TST arm only; the paired baseline drops them."""
    return key.startswith("tst.")


# group -> [(cell name, overrides)]; "ref" is the preset as it is.
GROUPS: dict[str, list[tuple[str, dict]]] = {
    "init": [("ref", {}), ("init=torch", {"model.init": "torch"}),
             ("init=torch-attn", {"model.init": "torch-attn"}), ("init=torch-mlp", {"model.init": "torch-mlp"}),
             ("init=titan", {"model.init": "titan"})],
    "sr": [("torch s=2", {"model.init": "torch", "tst.bag_size": 2}),
           ("torch s=3", {"model.init": "torch", "tst.bag_size": 3}),
           ("torch r=0.1", {"model.init": "torch", "tst.ratio": 0.1}),
           ("torch r=0.2", {"model.init": "torch", "tst.ratio": 0.2})],
    # Issue 21's screen of the long, small regime (preset cpu-long): the three inits at the preset's
    # s=4, r=0.3, lr 3e-3; then s, r and the LR around the best of them.
    "long-init": [("normal", {"model.init": "normal"}), ("torch", {"model.init": "torch"}),
                  ("titan", {"model.init": "titan"})],
    "long-sr": [(f"{init} {name}", {"model.init": init, **ov}) for init in ("normal", "torch", "titan")
                for name, ov in (("s=2", {"tst.bag_size": 2}), ("r=0.1", {"tst.ratio": 0.1}),
                                 ("s=2 r=0.1", {"tst.bag_size": 2, "tst.ratio": 0.1}),
                                 ("lr=6e-3", {"optim.lr": 6e-3}))],
    "wd": [("torch wd-emb", {"model.init": "torch", "optim.decay_embeddings": True})],
    "lr": [("torch lr=6e-3", {"model.init": "torch", "optim.lr": 6e-3}),
           ("torch lr=1.5e-3", {"model.init": "torch", "optim.lr": 1.5e-3})],
    # The paper's ablations (issue 13), on the preset as --set leaves it (s=4, r=0.3 on cpu-small).
    "modes": [("full", {}), ("input-only", {"tst.mode": "input"}), ("output-only", {"tst.mode": "output"})],
    "loss": [("mce_alt", {"tst.loss": "mce_alt"})],
    "switch": [("reset optimizer", {"tst.reset_optimizer": True}), ("re-init embed+head", {"tst.reinit": "both"})],
    "weights8": [("s=8 uniform", {"tst.bag_size": 8}), ("s=8 power", {"tst.bag_size": 8, "tst.weights": "power"}),
                 ("s=8 mi", {"tst.bag_size": 8, "tst.weights": "mi"})],
    "curriculum": [("curriculum 8:0.1,4:0.1,2:0.1", {"tst.schedule": "8:0.1,4:0.1,2:0.1"})],
}

# Head-to-head comparisons of two TST cells, paired by seed (reported when both were run):
# (cell A, cell B, the question). Difference = loss(B) - loss(A): positive = A better.
CONTRASTS = [
    ("full", "input-only", "is full superposition better than input-only?"),
    ("full", "output-only", "is full superposition better than output-only?"),
    ("input-only", "output-only", "input-only vs output-only"),
    ("mce_alt", "full", "MCEAlt vs MCE"),
    ("full", "reset optimizer", "does resetting the optimizer at the switch hurt?"),
    ("full", "re-init embed+head", "does re-initialising embedding and head at the switch hurt?"),
    ("s=8 power", "s=8 uniform", "power vs uniform weights at s=8"),
    ("s=8 mi", "s=8 uniform", "fitted-MI vs uniform weights at s=8"),
    ("s=8 mi", "s=8 power", "fitted-MI vs power weights at s=8"),
    ("curriculum 8:0.1,4:0.1,2:0.1", "full", "the curriculum vs two-phase s=4, r=0.3 (equal FLOPs)"),
    ("curriculum 8:0.1,4:0.1,2:0.1", "s=8 uniform", "the curriculum vs two-phase s=8, uniform (equal FLOPs)"),
    ("curriculum 8:0.1,4:0.1,2:0.1", "s=8 mi", "the curriculum vs the best two-phase setting, s=8 with MI weights"),
]


def run_name(overrides: dict, seed: int) -> str:
    parts = [f"{k.split('.')[-1]}={v}" for k, v in sorted(overrides.items())]
    return "_".join(parts + [f"seed{seed}"]).replace("/", "-")


def config_for(base: list[tuple[str, str]], preset_name: str, overrides: dict, seed: int):
    cfg = set_fields(preset(preset_name), [*base, *overrides.items()])
    set_field(cfg, "train.seed", seed)
    return cfg.validate()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="cpu-small")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--groups", default=",".join(GROUPS))
    ap.add_argument("--cells", help="only these cells of the groups (comma-separated names as in GROUPS)")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    ap.add_argument("--report-only", action="store_true", help="summarise the finished runs, train nothing")
    a = ap.parse_args()
    try:
        base = parse_overrides([f"--{kv}" for kv in a.set])
        seeds = [int(x) for x in a.seeds.split(",")]
        groups = a.groups.split(",")
        unknown = [g for g in groups if g not in GROUPS]
        if unknown:
            raise UserError(f"unknown group(s) {', '.join(unknown)}; choose from {', '.join(GROUPS)}")
    except (UserError, ValueError) as e:
        sys.exit(f"knobs: {e}")
    only = set(a.cells.split(",")) if a.cells else None
    chosen = {g: [c for c in GROUPS[g] if only is None or c[0] in only] for g in groups}
    cells = [c for g in groups for c in chosen[g]]
    runs_dir = a.out / "runs"
    t0 = time.time()
    # Baselines first for each seed, so every finished TST run has its pair.
    plan = []
    for group in groups:
        for seed in seeds:
            for name, ov in chosen[group]:
                base_ov = {k: v for k, v in ov.items() if not is_tst_key(k)}
                plan.append({**base_ov, "tst.ratio": 0.0, "tst.bag_size": 1, "_seed": seed})
                plan.append({**ov, "_seed": seed})
    done = set()
    for item in plan:
        seed = item.pop("_seed")
        name = run_name(item, seed)
        if name in done:
            continue
        done.add(name)
        if a.report_only:
            continue
        cfg = config_for(base, a.preset, item, seed)
        try:  # beside the run directory, which run_cell may remove and create again
            lock = lock_dir(runs_dir, "knob run", lock_path=runs_dir / f".{name}.lock")
        except UserError:
            print(f"knobs: {name}: another process is training it, skipped", flush=True)
            continue
        try:
            summary = run_cell(cfg, runs_dir / name, log=print)
        finally:
            lock.release()
        print(f"knobs: {name}: val_loss {summary['val_loss']:.4f} [{time.time() - t0:.0f}s]", flush=True)
    report(a, base, cells, seeds, runs_dir)


def _loss(runs_dir: Path, overrides: dict, seed: int) -> float | None:
    p = runs_dir / run_name(overrides, seed) / "summary.json"
    return json.loads(p.read_text())["val_loss"] if p.is_file() else None


def report(a, base, cells, seeds, runs_dir: Path) -> None:
    rows, baselines = [], {}
    for name, ov in cells:
        base_ov = {k: v for k, v in ov.items() if not is_tst_key(k)}
        b_ov = {**base_ov, "tst.ratio": 0.0, "tst.bag_size": 1}
        pairs = [(k, _loss(runs_dir, b_ov, k), _loss(runs_dir, ov, k)) for k in seeds]
        pairs = [(k, b, t) for k, b, t in pairs if b is not None and t is not None]
        bkey = json.dumps(base_ov, sort_keys=True)
        baselines.setdefault(bkey, {k: b for k, b, _ in pairs})
        rows.append({"cell": name, "overrides": ov, "baseline_key": bkey, "pairs": pairs})
    # The best baseline: lowest mean over the seeds every baseline has.
    full = {k: v for k, v in baselines.items() if v and all(s in v for s in seeds)}
    best_key = min(full, key=lambda k: sum(full[k].values())) if full else None
    out = {"preset": a.preset, "set": a.set, "seeds": seeds, "best_baseline": best_key,
           "baselines": {k: stats(list(v.values())) for k, v in full.items()}, "cells": [],
           "environment": environment(), "date": time.strftime("%Y-%m-%d")}
    lines = [f"# Knob screen: TST gain by setting ({a.preset}, seeds {', '.join(map(str, seeds))})", "",
             f"Overrides on every run: `{' '.join('--' + s for s in a.set) or '(none)'}`.",
             f"Best baseline: {best_key} (mean {stats(list(full[best_key].values()))['mean']:.4f})" if best_key else "",
             "", "Gains in nats, positive = TST better; mean ± std over paired seeds, 95% interval in brackets.", "",
             "| cell | n | TST loss | own baseline | gain vs own baseline | gain vs best baseline |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        if not r["pairs"]:
            continue
        own = stats([b - t for _, b, t in r["pairs"]])
        best = stats([full[best_key][k] - t for k, _, t in r["pairs"]]) if best_key else None
        tst = stats([t for _, _, t in r["pairs"]])
        bl = stats([b for _, b, _ in r["pairs"]])
        out["cells"].append({"cell": r["cell"], "overrides": r["overrides"], "tst_val_loss": tst,
                             "baseline_val_loss": bl, "gain_vs_own_baseline": own, "gain_vs_best_baseline": best})
        lines.append(f"| {r['cell']} | {own['n']} | {tst['mean']:.4f} | {bl['mean']:.4f} | {_ci(own)} | "
                     f"{_ci(best) if best else 'n/a'} |")
    tst_loss = {r["cell"]: {k: t for k, _, t in r["pairs"]} for r in rows}
    heads = [(x, y, q) for x, y, q in CONTRASTS if tst_loss.get(x) and tst_loss.get(y)]
    if heads:
        lines += ["", "Head to head, paired by seed: difference = loss(B) - loss(A), positive = A better.", "",
                  "| A | B | question | n | difference |", "|---|---|---|---|---|"]
    out["contrasts"] = []
    for x, y, q in heads:
        both = sorted(set(tst_loss[x]) & set(tst_loss[y]))
        d = stats([tst_loss[y][k] - tst_loss[x][k] for k in both])
        out["contrasts"].append({"a": x, "b": y, "question": q, "seeds": both, "difference": d})
        lines.append(f"| {x} | {y} | {q} | {d['n']} | {_ci(d)} |")
    (a.out / "knobs.json").write_text(json.dumps(out, indent=2) + "\n")
    (a.out / "knobs.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _ci(st: dict) -> str:
    if st["n"] < 2 or math.isnan(st["std"]):
        return f"{st['mean']:+.4f}"
    return f"{st['mean']:+.4f} ± {st['std']:.4f} [{st['mean'] - st['ci95']:+.3f}, {st['mean'] + st['ci95']:+.3f}]"


if __name__ == "__main__":
    main()
