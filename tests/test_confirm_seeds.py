"""benchmarks/confirm_seeds.sh: one compare split over processes (a seed each), then the report over
all of them. Since compare refuses a folder it did not make (issue 31), the script marks its
report folder as compare would; this runs it end to end on the tiny data, so a rule that breaks
the split fails here, not in the middle of an 8-seed confirmation."""

import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_confirm_seeds_runs_seeds_apart_then_reports_them_together(tiny_data, tmp_path):
    out = tmp_path / "confirm"
    small = ["--preset", "cpu-smoke", "--data.path", str(tiny_data), "--data.seq_len=16", "--data.val_tokens=256",
             "--train.steps=4", "--train.batch_size=2", "--model.dim=32", "--optim.warmup_steps=1",
             "--baseline-lengths", "1", "--tst-grid", "optim.lr=1e-3"]
    r = subprocess.run(["bash", "benchmarks/confirm_seeds.sh", str(out), "5", "2", "--", *small], cwd=ROOT,
                       capture_output=True, text=True, timeout=600, env={"CONFIRM_CORES": "0", "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads((out / "all" / "report.json").read_text())
    assert sorted(p.name for p in (out / "all").glob("seed-*")) == ["seed-5", "seed-6"]
    assert "reusing" in r.stdout + r.stderr  # the final compare trained nothing again
    mark = json.loads((out / "all" / ".superpose-experiment.json").read_text())
    assert mark["kind"] == "compare" and "--seeds 2 --seed0 5" in mark["command"]
    assert report
