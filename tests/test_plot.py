"""superpose plot: the series and phase boundaries read from metrics.jsonl (a curriculum, a skipped
step, a switch record, an old file without elapsed_s), the image of a real run, several runs in one
image, --watch on a run that grows and then finishes (or is stopped by Ctrl-C), and one line per
mistake.

Run: .venv/bin/pytest tests/test_plot.py
"""

import json
import math
import os
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from superpose.cli import main
from superpose.errors import UserError
from superpose.experiments.plot import DPI, FIGSIZE, read_metrics, run_names, run_series, watch

ROOT = Path(__file__).resolve().parent.parent
SIZE = (round(FIGSIZE[0] * DPI), round(FIGSIZE[1] * DPI))


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a whole PNG: its signature, its IHDR chunk and its IEND trailer."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and data.endswith(b"IEND\xaeB`\x82")
    return struct.unpack(">II", data[16:24])


def curriculum(time_field: bool = True) -> list[dict]:
    """A 6-step run: stage s=8 (steps 0-1), stage s=4 (2-3), next-token (4-5); step 3 skipped (NaN);
    evaluations after steps 1 and 5; a switch record at step 4 (an optimizer reset)."""
    recs = []
    for k in range(6):
        phase, s = (1, 8) if k < 2 else (1, 4) if k < 4 else (2, 1)
        rec = {"type": "train", "step": k, "phase": phase, "bag_size": s, "loss": None if k == 3 else 6.0 - k / 2,
               "lr": 1e-3 * (k + 1), "grad_norm": None if k == 3 else 1.0 + k, "tokens_seen": 100 * (k + 1),
               "elapsed_s": 0.5 * (k + 1)}
        if not time_field:  # what metrics.jsonl held before elapsed_s
            del rec["elapsed_s"]
        if k == 4:
            recs.append({"type": "switch", "step": 4, "reinit": "none", "reset_optimizer": True})
        recs.append(rec)
        if k in (1, 5):
            ev = {"type": "eval", "step": k, "phase": phase, "bag_size": s, "tokens_seen": 100 * (k + 1),
                  "val_loss": 7.0 - k / 2}
            recs.append(ev | ({"elapsed_s": 0.5 * (k + 1) + 0.1} if time_field else {}))
    return recs


def write_run(run: Path, recs: list[dict], tail: str = "") -> Path:
    run.mkdir(parents=True, exist_ok=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs) + tail)
    return run


def test_series_and_every_boundary_of_a_curriculum(tmp_path):
    run = write_run(tmp_path / "cur", curriculum(), tail='{"type": "train", "st')  # a line torn mid-write
    recs = read_metrics(run)
    assert len(recs) == 6 + 2 + 1
    steps = run_series(recs, "step")
    assert steps.x == [1, 2, 3, 4, 5, 6]  # after the step: step k is k + 1 steps done
    assert [(s, x) for s, x, _ in steps.boundaries] == [(2, 2), (4, 4)]  # both stages' ends; the switch once
    assert [label for *_, label in steps.boundaries] == ["s=8→4", "s=4→1"]
    assert steps.superposed == [True] * 4 + [False] * 2
    assert math.isnan(steps.loss[3]) and math.isnan(steps.grad_norm[3]) and steps.loss[4] == 4.0
    assert steps.eval_x == [2, 6] and steps.val_loss == [6.5, 4.5]
    tokens = run_series(recs, "tokens")
    assert tokens.x == [100, 200, 300, 400, 500, 600] and tokens.eval_x == [200, 600]
    assert [x for _, x, _ in tokens.boundaries] == [200, 400]  # where the stage's last step ended
    wall = run_series(recs, "time")
    assert wall.x == [0.5, 1.0, 1.5, 2.0, 2.5, 3.0] and [x for _, x, _ in wall.boundaries] == [1.0, 2.0]
    assert wall.eval_x == [1.1, 3.1] and wall.lr == steps.lr


def test_a_switch_record_alone_marks_its_step():
    recs = [r for r in curriculum() if r["type"] == "train" and r["step"] != 2]  # a lost line: s=8 ends at step 1
    recs.append({"type": "switch", "step": 5, "reinit": "head", "reset_optimizer": False})
    assert run_series(recs, "step").boundaries == [(3, 2, "s=8→4"), (4, 4, "s=4→1"), (5, 5, "switch")]


def test_an_old_file_without_elapsed_s_plots_by_step_and_tokens_only(tmp_path, capsys):
    run = write_run(tmp_path / "old", curriculum(time_field=False))
    assert run_series(read_metrics(run), "tokens").x[-1] == 600
    with pytest.raises(UserError, match="no elapsed_s"):
        run_series(read_metrics(run), "time", "old")
    assert main(["plot", str(run), "--x", "time"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "old:" in err[0] and "--x step" in err[0], err
    assert not (run / "plot.png").exists()
    assert main(["plot", str(run)]) == 0 and png_size(run / "plot.png") == SIZE


def test_run_names_tell_equal_directory_names_apart(tmp_path):
    assert run_names([tmp_path / "a" / "run", tmp_path / "b" / "run", tmp_path / "c"]) == ["a/run", "b/run", "c"]
    assert run_names([tmp_path / "x", tmp_path / "x"]) == ["x", "x (2)"]


def test_a_real_run_is_drawn_beside_its_metrics(one_thread, checkpointed_run, capsys):
    recs = read_metrics(checkpointed_run)
    assert [s for s, _, _ in run_series(recs, "step").boundaries] == [4]  # tiny_config switches at step 4
    wall = run_series(recs, "time")
    assert wall.x == sorted(wall.x) and len(wall.x) == 8 and len(wall.eval_x) == 2
    assert main(["plot", str(checkpointed_run), "--x", "time"]) == 0
    assert png_size(checkpointed_run / "plot.png") == SIZE
    assert capsys.readouterr().err.strip() == f"wrote {checkpointed_run / 'plot.png'}"


def test_several_runs_go_in_one_image_named_by_out(tmp_path, capsys):
    a = write_run(tmp_path / "a" / "run", curriculum())
    b = write_run(tmp_path / "b" / "run", [r for r in curriculum() if r.get("phase", 2) == 2])  # a baseline-like run
    assert main(["plot", str(a), str(b)]) == 2
    assert "--out" in capsys.readouterr().err
    out = tmp_path / "figs" / "both.png"  # its folder is made
    assert main(["plot", str(a), str(b), "--out", str(out), "--x", "tokens"]) == 0
    assert png_size(out) == SIZE and not list(out.parent.glob(".*tmp*"))


def test_watch_waits_redraws_and_stops_when_the_run_finishes(tmp_path):
    run = write_run(tmp_path / "live", [])  # the trainer has opened metrics.jsonl, no step yet
    out, lines = run / "plot.png", []
    recs = curriculum()

    def trainer():
        time.sleep(0.3)
        with open(run / "metrics.jsonl", "a") as f:
            f.write("".join(json.dumps(r) + "\n" for r in recs[:4]))
        while not out.exists():  # the first image is drawn, then the rest of the run comes
            time.sleep(0.02)
        with open(run / "metrics.jsonl", "a") as f:
            f.write("".join(json.dumps(r) + "\n" for r in recs[4:]))
        (run / "summary.json").write_text("{}")

    looks = []

    def sleep(s):
        looks.append(s)
        assert len(looks) < 2000, "watch did not stop"
        time.sleep(s)

    t = threading.Thread(target=trainer, daemon=True)
    t.start()
    watch([run], out, "step", 0.05, lines.append, sleep=sleep)
    t.join(5)
    assert len(lines) >= 2 and "live step 3" in lines[0], lines  # steps 0-2 were first
    assert lines[-1].endswith("live step 6 (finished)"), lines
    assert png_size(out) == SIZE and not list(run.glob(".*tmp*"))


def test_watch_from_the_command_line_ends_quietly_on_ctrl_c(tmp_path):
    run = write_run(tmp_path / "r", curriculum()[:4])  # unfinished: no summary.json
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "superpose", "plot", str(run), "--watch", "--every", "0.1",
                             "--x", "tokens"],
                            stderr=subprocess.PIPE, text=True, env=env,
                            # Ctrl-C as a terminal delivers it: the pytest worker's own SIGINT
                            # disposition (SIG_IGN is inherited across exec) must not decide it.
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + 60
        while not (run / "plot.png").exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()[1]  # still watching: the run has not finished
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "r step 3" in err.splitlines()[0]
    assert png_size(run / "plot.png") == SIZE and not list(run.glob(".*tmp*"))


@pytest.mark.parametrize("case, needle", [
    ("missing", "does not exist"), ("no_metrics", "has no metrics.jsonl"), ("empty", "has no step yet"),
    ("bad_x", "--x must be one of step, tokens, time"), ("bad_out", "give a file ending in .png"),
    ("bad_watch", "--every takes a positive number"),
])
def test_mistakes_are_one_line_and_exit_2(tmp_path, capsys, case, needle):
    run = write_run(tmp_path / "r", curriculum())
    argv = {"missing": [str(tmp_path / "nope")], "no_metrics": [str(tmp_path)],
            "empty": [str(write_run(tmp_path / "e", []))], "bad_x": [str(run), "--x", "loss"],
            "bad_out": [str(run), "--out", str(tmp_path / "p.xyz")], "bad_watch": [str(run), "--watch", "--every", "0"]}[case]
    assert main(["plot", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("superpose: error: ") and needle in err[0], err
