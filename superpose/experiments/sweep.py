"""`superpose sweep`: the paper's r x s grid (its Tables 4-7) for your own setting.

Every cell is a full TST run (same model, data, steps, schedule) scored by its final validation
loss; row r = 0 is the baseline, one per seed, and each cell's gain is paired with the baseline of
its own seed. Each finished run leaves `cells/NAME/summary.json`; a rerun of the same command
skips those and continues a cell that was cut short from its newest checkpoint (a cell that
saved none starts again), so an interrupted sweep resumes; Ctrl-C or SIGTERM saves one first.
"""

from __future__ import annotations

import copy
import json
import signal
import time
from pathlib import Path
from collections.abc import Callable

from ..config import Config
from ..errors import Interrupted, UserError
from ..training import resolve_data
from ..training.metrics import environment
from ..training.ownership import (EXPERIMENT_MARK, begin_experiment, check_experiment_dir, claim,
                                  experiment_advice, mark_experiment)
from .arms import quiet, start_arm
from .fingerprint import check_same_config
from .stats import stats


def cell_name(bag_size: int, ratio: float, seed: int) -> str:
    return f"baseline-seed{seed}" if ratio == 0 or bag_size == 1 else f"s{bag_size}-r{ratio:g}-seed{seed}"


def _read_config(cell_dir: Path) -> dict | None:
    """The config a cell's run recorded (config.json, checksummed in its summary.json), or None."""
    try:
        return json.loads((cell_dir / "config.json").read_text())
    except (OSError, ValueError):
        return None


def run_cell(cfg: Config, cell_dir: Path, log: Callable[[str], None]) -> dict:
    """A cell's summary: read back when it finished before, else trained, continued from its newest
    checkpoint when it was cut short after saving one (bit for bit, as `train --resume`)."""
    done = cell_dir / "summary.json"
    if done.is_file():
        return json.loads(done.read_text())
    try:
        start_arm(cfg, cell_dir, resolve_data(cfg), quiet).train(progress=False)
    except Interrupted as e:  # the run's own advice (`train --resume` on the cell) is not the way: the sweep is
        raise Interrupted(e.signum, f"stopped by {signal.Signals(e.signum).name} during cell {cell_dir.name}") from None
    return json.loads(done.read_text())


def sweep(cfg: Config, out: Path, bag_sizes: list[int], ratios: list[float], seeds: list[int],
          command: str = "", log: Callable[[str], None] = print) -> dict:
    if cfg.tst.schedule:
        raise UserError(f"sweep varies tst.bag_size and tst.ratio, which tst.schedule={cfg.tst.schedule!r} replaces; "
                        "drop --tst.schedule (compare a curriculum with superpose compare)")
    if any(s < 2 for s in bag_sizes) or any(not 0 < r <= 1 for r in ratios):
        raise UserError("sweep needs --bag-sizes >= 2 and --ratios in (0, 1]; the baseline (r = 0) is always run")
    # One writer per sweep directory (an OS lock, dropped by the kernel if we die).
    check_experiment_dir(out, "sweep")  # new, empty or this sweep's own: nothing else is written
    with claim(out, "sweep directory", mine=(EXPERIMENT_MARK,)), experiment_advice("sweep", out, command):
        begin_experiment(out, "sweep", command)  # `train` keeps out of its arms from now on
        plan = [(1, 0.0, k) for k in seeds] + [(s, r, k) for k in seeds for r in ratios for s in bag_sizes]
        t0 = time.time()
        results = {}
        for i, (s, r, k) in enumerate(plan):
            name = cell_name(s, r, k)
            c = copy.deepcopy(cfg)
            c.tst.bag_size, c.tst.ratio, c.train.seed = s, r, k
            c.validate()
            fresh = not (out / "cells" / name / "summary.json").is_file()
            if not fresh:  # a finished cell is reused only if it was run with these settings
                check_same_config(_read_config(out / "cells" / name), c, f"cell {name}",
                                  out / "cells" / name / "config.json", "use a new --out for other settings")
            results[(s, r, k)] = run_cell(c, out / "cells" / name, log)
            log(f"sweep: {i + 1}/{len(plan)} {name}: val_loss {results[(s, r, k)]['val_loss']:.4f}"
                f"{'' if fresh else ' (done before)'} [{time.time() - t0:.0f}s]")
        base = {k: results[(1, 0.0, k)]["val_loss"] for k in seeds}
        cells = []
        for r in ratios:
            for s in bag_sizes:
                losses = [results[(s, r, k)]["val_loss"] for k in seeds]
                cells.append({"bag_size": s, "ratio": r, "val_loss": stats(losses),
                              "gain": stats([base[k] - results[(s, r, k)]["val_loss"] for k in seeds])})
        grid = {"config": cfg.to_dict(), "command": command, "seeds": seeds, "bag_sizes": bag_sizes, "ratios": ratios,
                "baseline": stats(list(base.values())), "cells": cells, "environment": environment(),
                "date": time.strftime("%Y-%m-%d")}
        from .report import plot_sweep, write_report

        write_report(out / "sweep.json", json.dumps(grid, indent=2) + "\n")
        T = cfg.train.steps
        plot_sweep(grid, out / "sweep_heatmap.png",
                   f"TST gain over the baseline at {T} steps (mean of {len(seeds)} seeds; baseline "
                   f"{grid['baseline']['mean']:.4f})")
        write_report(out / "sweep.md", sweep_markdown(grid))
        mark_experiment(out, "sweep", command)  # the command that finished it, quoted from now on
        best = max(cells, key=lambda c: c["gain"]["mean"])
        g = best["gain"]  # the interval next to the mean; one seed has none
        spread = f"95% +/-{g['ci95']:.4f} over {g['n']} seeds" if g["n"] > 1 else "1 seed: no interval"
        log(f"sweep: best s={best['bag_size']}, r={best['ratio']}: gain {g['mean']:+.4f} nats ({spread}) over the "
            f"baseline {grid['baseline']['mean']:.4f}")
        return grid


def sweep_markdown(grid: dict) -> str:
    sizes, ratios, n = grid["bag_sizes"], grid["ratios"], len(grid["seeds"])
    by = {(c["ratio"], c["bag_size"]): c for c in grid["cells"]}
    b = grid["baseline"]
    spread = "" if n < 2 else f" ± {b['std']:.4f}"
    head = "| r \\ s | " + " | ".join(map(str, sizes)) + " |\n|---|" + "---|" * len(sizes) + "\n"
    loss = head + f"| 0 (baseline) | {b['mean']:.4f}{spread} |" + " |" * (len(sizes) - 1) + "\n"
    gain = head
    for r in ratios:
        loss += f"| {r:g} | " + " | ".join(f"{by[(r, s)]['val_loss']['mean']:.4f}" for s in sizes) + " |\n"
        gain += f"| {r:g} | " + " | ".join(
            f"{by[(r, s)]['gain']['mean']:+.4f}" + ("" if n < 2 else f" ± {by[(r, s)]['gain']['std']:.4f}")
            for s in sizes) + " |\n"
    env = grid["environment"]
    return (f"# superpose sweep: final validation loss by r x s\n\n"
            f"Date {grid['date']}; {n} seed(s) {grid['seeds']}; {grid['config']['train']['steps']} steps; "
            f"machine {env['platform']}, {env['cpu_count']} CPUs, torch {env['torch']}.\n\n"
            + (f"Command: `{grid['command']}`\n\n" if grid["command"] else "")
            + "## Mean final validation loss (nats/token)\n\n" + loss
            + "\n## Gain over the baseline of the same seed (nats; positive = TST better), mean ± std\n\n" + gain
            + "\n![heat map](sweep_heatmap.png)\n")
