"""compare and sweep: the iso-loss arithmetic on synthetic curves, decayed baseline branches that
equal straight runs, report fields that agree with each other, and a sweep that resumes.

Run: .venv/bin/pytest tests/test_compare.py
"""

import json
import math

import pytest

from superpose.compare import baseline_lengths, compare, iso_loss, stats
from superpose.errors import UserError
from superpose.sweep import sweep

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
    per_seed = [json.loads((tmp_path / "cmp" / f"seed-{k}" / "result.json").read_text()) for k in (0, 1)]
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


def test_compare_needs_a_tst_arm(tiny_data, tmp_path):
    with pytest.raises(UserError, match="compare needs a TST arm"):
        compare(tiny_config(tiny_data, tst__ratio=0.0), tmp_path / "c", seeds=[0])


def test_sweep_grid_and_resume(tiny_data, tmp_path, monkeypatch):
    cfg = tiny_config(tiny_data, train__steps=4, train__eval_every=0)
    import superpose.sweep as sw

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
