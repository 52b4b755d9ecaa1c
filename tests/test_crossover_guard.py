"""benchmarks/crossover_guard.py: a rerun of a recorded compare is the same experiment (its
baselines and --tst-grid cells included, bit for bit), and only a gain interval wholly below the
recorded one is a regression.

Run: .venv/bin/pytest tests/test_crossover_guard.py
"""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from superpose.experiments.baselines import parse_baselines, parse_grid
from superpose.experiments.compare import compare

from conftest import tiny_config

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def guard():
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("crossover_guard", BENCH / "crossover_guard.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_only_a_gain_interval_wholly_below_the_recorded_one_is_a_regression(guard):
    rec = {"lengths": [{"steps": 600, "equal_steps_loss_gain": {"mean": -0.03, "ci95": 0.02}},
                       {"steps": 1200, "equal_steps_loss_gain": {"mean": 0.01, "ci95": 0.02}}]}
    same = {"lengths": [{"steps": 600, "equal_steps_loss_gain": {"mean": -0.04, "ci95": 0.02}},
                        {"steps": 1200, "equal_steps_loss_gain": {"mean": -0.02, "ci95": 0.015}}]}
    worse = {"lengths": [{"steps": 600, "equal_steps_loss_gain": {"mean": -0.03, "ci95": 0.02}},
                         {"steps": 1200, "equal_steps_loss_gain": {"mean": -0.05, "ci95": 0.015}}]}
    assert guard.regressions(rec, same) == []  # overlapping intervals: noise, not a regression
    bad = guard.regressions(rec, worse)
    assert len(bad) == 1 and bad[0].startswith("1200 steps")


def test_the_best_baseline_gain_is_watched_too(guard):
    g = {"mean": 0.05, "ci95": 0.01}
    rec = {"lengths": [{"steps": 6000, "equal_steps_loss_gain": g, "best_baseline_gain": g}]}
    worse = {"lengths": [{"steps": 6000, "equal_steps_loss_gain": g, "best_baseline_gain": {"mean": 0.0, "ci95": 0.01}}]}
    bad = guard.regressions(rec, worse)
    assert len(bad) == 1 and "best baseline" in bad[0]
    assert guard.regressions(rec, rec) == []


def test_a_rerun_of_a_tuned_compare_is_the_recorded_experiment(guard, tiny_data, tmp_path, monkeypatch, capsys,
                                                                one_thread):
    """The tuned record's shape: a tuned own baseline, one more baseline, TST as a one-cell
    --tst-grid, two baseline lengths. The guard's rerun gives every recorded loss back bit for bit
    (a TST cell or a baseline left out would change them); --seeds/--gain-only rerun a subset."""
    cfg = tiny_config(tiny_data, train__eval_every=8)
    recorded = compare(cfg, tmp_path / "rec", seeds=[3, 4], factors=(1.0, 1.5), log=lambda _: None,
                       baselines=parse_baselines("model.init=normal"),
                       tst_grid=parse_grid("optim.lr=0.01;tst.ratio=0.25", "--tst-grid", tst=True))
    record = tmp_path / "rec" / "report.json"

    def run(*args):
        monkeypatch.setattr(sys, "argv", ["crossover_guard.py", "--record", str(record), "--data", str(tiny_data),
                                          *args])
        return guard.main()

    assert run("--out", str(tmp_path / "again")) == 0
    assert "no regression" in capsys.readouterr().out
    again = json.loads((tmp_path / "again" / "report.json").read_text())
    for key in ("tst_val_loss", "baseline_val_loss", "best_baseline_gain"):
        assert again["lengths"][0][key]["values"] == recorded["lengths"][0][key]["values"], key
    assert again["tst_grid"]["best"] == "optim.lr=0.01,tst.ratio=0.25"
    assert again["iso_loss_step_ratio"]["values"] == recorded["iso_loss_step_ratio"]["values"]

    assert run("--out", str(tmp_path / "part"), "--seeds", "1", "--gain-only") == 0
    part = json.loads((tmp_path / "part" / "report.json").read_text())
    assert part["seeds"] == [3] and part["baseline_factors"] == [1.0]
    assert part["lengths"][0]["tst_val_loss"]["values"] == recorded["lengths"][0]["tst_val_loss"]["values"][:1]

    capsys.readouterr()
    assert run("--out", str(tmp_path / "bad"), "--seeds", "3") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "the record has 2 seeds" in err and not (tmp_path / "bad").exists()
