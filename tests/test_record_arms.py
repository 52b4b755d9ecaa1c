"""The tuned record's arm picker (benchmarks/records/tuned_cpu-long_2026-12-04/drivers/arms.py)
applies PREREGISTRATION.md section 1's widening rule: a winner on the rate grid's edge asks for
the next rate out, and a widening cell that beats it becomes the winner (a bug once kept the old
edge once the widening cell existed)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

ARMS = Path(__file__).resolve().parent.parent / "benchmarks/records/tuned_cpu-long_2026-12-04/drivers/arms.py"


def picker(tmp_path: Path, losses: dict[str, float]):
    """arms.py in a record of its own, with a screen of these d = 32 cells (both seeds alike)."""
    (tmp_path / "drivers").mkdir(parents=True)
    shutil.copy(ARMS, tmp_path / "drivers" / "arms.py")
    for cell, loss in losses.items():
        for seed in (0, 1):
            d = tmp_path / "screen" / f"d32-{cell}-s{seed}"
            d.mkdir(parents=True)
            (d / "summary.json").write_text(json.dumps({"val_loss": loss}))

    def run(*args: str) -> str:
        return subprocess.run([sys.executable, str(tmp_path / "drivers" / "arms.py"), "--size", "d32", *args],
                              capture_output=True, text=True, check=True).stdout
    return run


def grid(best_lr: str) -> dict[str, float]:
    """Both arms, both inits, the four grid rates; the normal init best, at `best_lr`."""
    lrs = ("1e-3", "1.5e-3", "2e-3", "3e-3")
    return {f"{arm}-{init}-lr{lr}": 4.4 - (init == "normal") * 0.05 - (lr == best_lr) * 0.02 + i * 0.001
            for arm in ("base", "tst") for init in ("torch", "normal") for i, lr in enumerate(lrs)}


def test_a_winner_on_the_edge_asks_for_the_next_rate_and_a_better_widening_cell_wins(tmp_path):
    cells = grid("3e-3")
    run = picker(tmp_path / "grid", cells)
    assert run("--cells").split() == ["base:normal:4e-3", "tst:normal:4e-3"]
    cells |= {"base-normal-lr4e-3": 4.0, "tst-normal-lr4e-3": 4.5}  # the baseline better out there, TST not
    run = picker(tmp_path / "widened", cells)
    assert run("--cells").split() == ["base:normal:6e-3"]  # 4e-3 is the new edge
    run = picker(tmp_path / "widened-twice", cells | {"base-normal-lr6e-3": 4.1})
    assert run("--cells").strip() == ""
    args = run("--compare-args").split()
    assert args[:2] == ["--model.init=normal", "--optim.lr=4e-3"]  # the widening cell, not the old edge
    assert "optim.lr=3e-3" in args[-1]  # TST's winner stayed at 3e-3, the better of it and 4e-3


def test_an_interior_winner_asks_for_nothing_more(tmp_path):
    run = picker(tmp_path, grid("2e-3"))
    assert run("--cells").strip() == ""
    assert "--optim.lr=2e-3" in run("--compare-args").split()
