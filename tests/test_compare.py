"""compare and sweep: the iso-loss arithmetic on synthetic curves, decayed baseline branches that
equal straight runs, report fields that agree with each other, and a sweep that resumes.

Run: .venv/bin/pytest tests/test_compare.py
"""

import json
import math

import pytest

from superpose.experiments.compare import baseline_lengths, compare, switch_evals
from superpose.experiments.stats import crossover, iso_loss, speedup_text, stats
from superpose.errors import UserError
from superpose.experiments.sweep import sweep

from conftest import tiny_config
from test_trainer import records, train


def test_iso_loss_interpolates_between_lengths():
    pts = [(10.0, 4.0), (20.0, 3.0), (40.0, 2.0)]
    assert iso_loss(3.5, pts) == (15.0, "interpolated")
    assert iso_loss(2.5, pts) == (30.0, "interpolated")
    assert iso_loss(3.0, pts) == (20.0, "interpolated")
    assert iso_loss(1.5, pts) == (40.0, "lower_bound")  # even the longest baseline is worse
    assert iso_loss(4.5, pts) == (10.0, "upper_bound")  # even the shortest baseline is better
    assert iso_loss(3.5, list(reversed(pts))) == (15.0, "interpolated")  # order does not matter


def test_stats_over_seeds():
    st = stats([1.0, 2.0, 3.0])
    assert st["mean"] == 2.0 and st["std"] == 1.0 and st["n"] == 3
    assert st["ci95"] == pytest.approx(4.303 / math.sqrt(3))
    assert math.isnan(stats([1.0])["std"])


def test_baseline_lengths():
    assert baseline_lengths(100, (0.5, 1.0, 2.0), 0.2, 10) == [50, 100, 200]
    assert baseline_lengths(100, (0.5, 2.0), 0.2, 10) == [50, 100, 200]  # 1x is always there
    with pytest.raises(UserError, match="decays before its"):
        baseline_lengths(10, (0.5, 1.0), 0.2, 5)


def test_compare_report_is_consistent_and_branches_are_straight_runs(tiny_data, tmp_path):
    cfg = tiny_config(tiny_data, train__eval_every=2)  # 8 steps, r = 0.5, s = 4
    rep = compare(cfg, tmp_path / "cmp", seeds=[0, 1], factors=(0.5, 1.0, 1.5), log=lambda m: None)
    for name in ("report.json", "report.md", "loss_vs_time.png", "loss_vs_step.png", "loss_vs_tokens.png"):
        assert (tmp_path / "cmp" / name).is_file(), name
    assert rep["baseline_lengths"] == [4, 8, 12]
    per_seed = [json.loads((tmp_path / "cmp" / f"seed-{k}" / "result.json").read_text())["by_steps"]["8"]
                for k in (0, 1)]
    for r in per_seed:
        equal = next(b for b in r["baseline"] if b["steps"] == 8)
        assert r["equal_steps_loss_gain"] == pytest.approx(equal["val_loss"] - r["tst"]["val_loss"])
        assert r["tst"]["tokens_seen"] == 4 * 4 * 16 * 4 + 4 * 4 * 16
        assert [b["tokens_seen"] for b in r["baseline"]] == [n * 4 * 16 for n in (4, 8, 12)]
        t_iso, kind = iso_loss(r["tst"]["val_loss"], [(b["train_time_s"], b["val_loss"]) for b in r["baseline"]])
        assert r["iso_loss_speedup"] == pytest.approx(t_iso / r["tst"]["train_time_s"]) and r["iso_loss_kind"] == kind
        assert r["tst"]["switch_step"] == 4
    g = rep["equal_steps_loss_gain"]
    assert g["values"] == [r["equal_steps_loss_gain"] for r in per_seed] and g["n"] == 2
    for key in ("val_loss", "train_time_s", "tokens_seen"):
        assert key in rep["arms"]["tst"] and key in rep["arms"]["baseline"]["8"]
    assert any("equal steps" in v for v in rep["verdicts"]) and "Verdict" in (tmp_path / "cmp" / "report.md").read_text()
    # A decay branched off the trunk is the straight baseline run of that length, bit for bit.
    for n in (4, 8):
        straight = train(tiny_config(tiny_data, train__eval_every=2, train__steps=n, tst__ratio=0.0, train__seed=1),
                         tmp_path / f"straight-{n}")
        branch_dir = tmp_path / "cmp" / "seed-1" / f"baseline-{n}"
        want = [r["loss"] for r in records(straight.run_dir, "train")]
        got = [r["loss"] for r in map(json.loads, (branch_dir / "metrics.jsonl").read_text().splitlines())
               if r["type"] == "train"]
        assert got == want, n
    # Rerunning the command reuses finished seeds.
    logs = []
    compare(cfg, tmp_path / "cmp", seeds=[0, 1], factors=(0.5, 1.0, 1.5), log=logs.append)
    assert sum("already done" in m for m in logs) == 2


def test_length_scan_shares_one_baseline_trunk_and_reports_every_length(tiny_data, tmp_path, monkeypatch):
    import superpose.experiments.compare as cmp

    steps_taken = []
    real_step = cmp.Trainer.step_once
    monkeypatch.setattr(cmp.Trainer, "step_once", lambda self: steps_taken.append(self.cfg.train.steps)
                        or real_step(self))
    cfg = tiny_config(tiny_data, train__eval_every=4, optim__warmup_steps=1)  # s = 4, r = 0.5, decay 25%
    rep = compare(cfg, tmp_path / "scan", seeds=[0, 1], factors=(1.0, 1.5), steps=[4, 8, 12], log=lambda m: None)
    # Per seed: the TST arms (4 + 8 + 12 steps) and ONE baseline trunk of 18 steps, with decay branches at
    # 4, 6, 8, 12 steps costing only their decay steps (1 + 2 + 2 + 3); nothing else.
    assert len(steps_taken) == 2 * (4 + 8 + 12 + 18 + 1 + 2 + 2 + 3)
    assert rep["steps"] == [4, 8, 12] and [ln["steps"] for ln in rep["lengths"]] == [4, 8, 12]
    for ln in rep["lengths"]:
        for key in ("equal_steps_loss_gain", "iso_loss_speedup", "iso_loss_step_ratio"):
            assert {"mean", "std", "ci95", "n", "values"} <= set(ln[key]) and ln[key]["n"] == 2
        T = ln["steps"]
        per = [json.loads((tmp_path / "scan" / f"seed-{k}" / "result.json").read_text())["by_steps"][str(T)]
               for k in (0, 1)]
        assert ln["equal_steps_loss_gain"]["values"] == [r["equal_steps_loss_gain"] for r in per]
        assert (tmp_path / "scan" / f"steps-{T}" / "report.md").is_file()
        # Evaluations around the switch: the last phase-1 step and 1, 2, ... steps into phase 2.
        evals = {e["step"] for e in per[0]["tst"]["curve"]}
        assert {T // 2 - 1, T // 2} <= evals, (T, evals)
    for name in ("report.json", "report.md", "gain_vs_length.png"):
        assert (tmp_path / "scan" / name).is_file()
    c = rep["crossover"]
    assert c["lengths"] == [4, 8, 12] and "estimate_steps" in c and "crossover" in " ".join(rep["verdicts"])
    # Only one trunk was trained: the baseline directories are the trunk and its branches.
    assert sorted(p.name for p in (tmp_path / "scan" / "seed-0").glob("baseline-*")) == \
        ["baseline-12", "baseline-18", "baseline-4", "baseline-6", "baseline-8"]
    # Rerunning reuses the seeds; asking for other lengths in the same folder is refused, not mixed.
    logs = []
    compare(cfg, tmp_path / "scan", seeds=[0, 1], factors=(1.0, 1.5), steps=[4, 8, 12], log=logs.append)
    assert sum("already done" in m for m in logs) == 2
    with pytest.raises(UserError, match="was run with --steps 4,8,12"):
        compare(cfg, tmp_path / "scan", seeds=[0], factors=(1.0, 1.5), steps=[4, 8, 16], log=lambda m: None)


@pytest.mark.parametrize("steps, match", [([8, 4], "strictly increasing"), ([4, 4], "strictly increasing"),
                                          ([1, 8], "needs both phases"), ([6, 10], "decays before its")])
def test_length_scan_refuses_lengths_it_cannot_use(tiny_data, tmp_path, steps, match):
    cfg = tiny_config(tiny_data, optim__warmup_steps=5)
    with pytest.raises(UserError, match=match):
        compare(cfg, tmp_path / "bad", seeds=[0], factors=(1.0,), steps=steps, log=lambda m: None)


def test_crossover_fit_recovers_a_known_trend():
    # gain = -0.3 + 0.2 * log10(T / 600): zero at T = 600 * 10**1.5 = 18,974; seeds shift it a little.
    truth = lambda T, k: -0.3 + 0.2 * math.log10(T / 600) + 0.01 * (k - 1)  # noqa: E731
    gains = {k: [(T, truth(T, k)) for T in (300, 600, 1200, 2400)] for k in range(3)}
    c = crossover(gains)
    assert c["b_per_decade"] == pytest.approx(0.2) and c["estimate_steps"] == pytest.approx(18974, rel=1e-3)
    lo, hi = c["ci95_steps"]
    assert lo < c["estimate_steps"] < hi  # the seeds' offsets make an interval around it
    assert c["predicted_gain"]["4800"]["mean"] == pytest.approx(truth(4800, 1), abs=1e-9)
    # A gain that shrinks with length predicts no crossover.
    assert crossover({k: [(T, -0.1 * math.log10(T) + 0.01 * k) for T in (100, 1000)] for k in range(3)})[
        "estimate_steps"] is None


def test_switch_evaluations_and_bounds_read_as_bounds():
    assert switch_evals(180, 100, 600) == {179, 180, 181, 183, 187, 195}  # up to the eval at step 199
    assert switch_evals(4, 2, 8) == {4}  # step 3 (last of phase 1) and 5 are regular evaluations already
    st = {"mean": 0.99}
    assert speedup_text(st, ["upper_bound"] * 3) == "<= 0.99x"
    assert speedup_text(st, ["lower_bound"]) == ">= 0.99x"
    assert speedup_text(st, ["interpolated", "interpolated"]) == "0.99x"
    assert "mixed" in speedup_text(st, ["interpolated", "upper_bound"])


def test_compare_needs_a_tst_arm(tiny_data, tmp_path):
    with pytest.raises(UserError, match="compare needs a TST arm"):
        compare(tiny_config(tiny_data, tst__ratio=0.0), tmp_path / "c", seeds=[0])


def test_sweep_grid_and_resume(tiny_data, tmp_path, monkeypatch):
    cfg = tiny_config(tiny_data, train__steps=4, train__eval_every=0)
    import superpose.experiments.sweep as sw

    real = sw.run_cell
    calls = []

    def crash_on_third(c, cell_dir, log):
        calls.append(cell_dir.name)
        if len(calls) == 3:
            raise KeyboardInterrupt  # the user pressed Ctrl-C during the third cell
        return real(c, cell_dir, log)

    monkeypatch.setattr(sw, "run_cell", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        sweep(cfg, tmp_path / "sw", [2, 4], [0.25, 0.5], seeds=[0], log=lambda m: None)
    monkeypatch.setattr(sw, "run_cell", real)
    logs = []
    grid = sweep(cfg, tmp_path / "sw", [2, 4], [0.25, 0.5], seeds=[0], log=logs.append)
    assert sum("(done before)" in m for m in logs) == 2  # the baseline and the first cell were kept
    assert len(grid["cells"]) == 4 and grid["baseline"]["n"] == 1
    base = grid["baseline"]["mean"]
    for c in grid["cells"]:
        assert c["gain"]["mean"] == pytest.approx(base - c["val_loss"]["mean"])
    for name in ("sweep.json", "sweep.md", "sweep_heatmap.png"):
        assert (tmp_path / "sw" / name).is_file()
    assert "| 0.25 |" in (tmp_path / "sw" / "sweep.md").read_text()
    with pytest.raises(UserError, match="--bag-sizes >= 2"):
        sweep(cfg, tmp_path / "sw2", [1], [0.3], seeds=[0])


def test_sigint_stops_a_sweep_with_its_cell_saved_and_its_command_continues_that_cell(tiny_data, tmp_path, capsys,
                                                                                       monkeypatch):
    """Ctrl-C in the second cell: it saves a checkpoint, exit 130 with one line naming the sweep's
    own command (not `train --resume` on the cell, which the sweep owns); that command continues
    the cell from the checkpoint, each step logged once, and ends with an uninterrupted sweep's grid."""
    import os
    import signal
    from superpose.cli import main
    from superpose.training import Trainer

    def args(out):
        return ["sweep", "--preset", "cpu-smoke", "--data.path", str(tiny_data), "--out", str(out),
                "--bag-sizes", "2", "--ratios", "0.5", "--train.steps=8", "--train.eval_every=0",
                "--checkpoint.every=0"]

    assert main(args(tmp_path / "whole")) == 0
    real, calls = Trainer.step_once, []

    def signalled(self):  # step 3 of the second cell (the first is the baseline's 8 steps)
        calls.append(1)
        if len(calls) == 11:
            os.kill(os.getpid(), signal.SIGINT)
        return real(self)

    monkeypatch.setattr(Trainer, "step_once", signalled)
    capsys.readouterr()
    assert main(args(tmp_path / "cut")) == 130
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("superpose: sweep stopped by SIGINT during cell s2-r0.5-seed0") and "Traceback" not in err
    assert "continue with: superpose sweep --preset cpu-smoke" in last and "--resume" not in last, last
    cell = tmp_path / "cut" / "cells" / "s2-r0.5-seed0"
    assert [p.name for p in (cell / "checkpoints").glob("step-*")] == ["step-000003"]

    monkeypatch.setattr(Trainer, "step_once", real)
    assert main(args(tmp_path / "cut")) == 0
    assert [r["step"] for r in records(cell, "train")] == list(range(8))  # continued, not restarted
    whole, cut = (json.loads((tmp_path / d / "sweep.json").read_text()) for d in ("whole", "cut"))
    assert [c["val_loss"] for c in cut["cells"]] == [c["val_loss"] for c in whole["cells"]]
    assert cut["baseline"] == whole["baseline"]


def test_gpu_preset_trains_on_cpu_and_gpu_compare_refuses_without_a_gpu(tiny_data, tmp_path):
    import shutil
    import subprocess
    from pathlib import Path

    from superpose.presets import preset
    from superpose.data import open_dataset
    from superpose.training import build_trainer

    cfg = preset("gpu-30m")  # the shape as shipped; only the length, batch and device shrink here
    cfg.data.path, cfg.data.val_tokens = str(tiny_data), 512
    cfg.train.steps, cfg.train.batch_size, cfg.train.eval_every, cfg.optim.warmup_steps = 4, 1, 0, 1
    cfg.train.device, cfg.train.dtype = "cpu", "float32"  # bf16 autocast is slow on CPU; same code path
    summary = build_trainer(cfg.validate(), tmp_path / "gpu30m", open_dataset(tiny_data), log=lambda m: None).train(
        progress=False)
    assert summary["steps"] == 4 and math.isfinite(summary["val_loss"])
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_compare.sh"
    if shutil.which("nvidia-smi") is None:
        p = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=60)
        assert p.returncode == 2 and "no NVIDIA GPU found" in p.stderr and len(p.stderr.strip().splitlines()) == 1
