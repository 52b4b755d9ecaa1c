"""TensorBoard and W&B tracking: what a tracker receives is what metrics.jsonl holds, the phase
switch is an event, a resume shows each step once, and a missing or failing tracker library never
costs the run (the libraries are optional: these tests skip without them)."""

from __future__ import annotations

import importlib.util
import json
import time

import pytest

from superpose.presets import resolve
from superpose.errors import UserError
from superpose.training import tracking

from test_checkpoint import config, records, resume, start, superpose

pytestmark = pytest.mark.usefixtures("one_thread")


def tensorboard_scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}, acc


def test_tensorboard_event_files_read_back_as_metrics_jsonl(tiny_data, tmp_path):
    pytest.importorskip("tensorboard")
    run = tmp_path / "run"
    t = start(config(tiny_data, log__tensorboard=True), run, stop=11)  # all 12 steps, not finished
    scalars, acc = tensorboard_scalars(run)
    train = records(run)
    assert scalars["train/loss"] == [(r["step"], pytest.approx(r["loss"], rel=1e-6)) for r in train]
    for field in ("lr", "grad_norm", "tokens_seen", "epoch", "bag_size", "phase", "tokens_per_s"):
        assert [v for _, v in scalars[f"train/{field}"]] == pytest.approx([r[field] for r in train], rel=1e-6), field
    evals = records(run, "eval")
    assert [s for s, _ in scalars["eval/val_loss"]] == [e["step"] for e in evals] == [3, 7, 11]
    # The switch into next-token training is an event, at its step, saying what it carried over.
    (switch,) = records(run, "switch")
    assert switch == {"type": "switch", "step": 6, "phase": 2, "bag_size": 1, "next_token": True,
                      "reinit": "none", "reset_optimizer": False}
    events = acc.Tensors("events/switch/text_summary")
    assert [e.step for e in events] == [6]
    assert json.loads(events[0].tensor_proto.string_val[0]) == switch
    assert t.state.step == 12


def test_a_resumed_run_shows_each_step_once_in_tensorboard(tiny_data, tmp_path):
    pytest.importorskip("tensorboard")
    run = tmp_path / "run"
    start(config(tiny_data, log__tensorboard=True), run, stop=8)  # checkpoint at 8, then step 8 "lost"
    resume(run)
    scalars, _ = tensorboard_scalars(run)
    assert [s for s, _ in scalars["train/loss"]] == list(range(12))
    assert [v for _, v in scalars["train/loss"]] == pytest.approx([r["loss"] for r in records(run)], rel=1e-6)


def test_tracking_can_be_turned_on_at_a_resume(tiny_data, tmp_path):
    pytest.importorskip("tensorboard")
    run = tmp_path / "run"
    start(config(tiny_data), run, stop=8)
    resume(run, "--log.tensorboard")  # a bare flag turns a bool on; tracking never changes the arithmetic
    scalars, _ = tensorboard_scalars(run)
    assert [s for s, _ in scalars["train/loss"]] == list(range(8, 12))


def wandb_runs(run_dir):
    return sorted((run_dir / "wandb").glob("offline-run-*"))


def test_wandb_offline_writes_the_run_into_the_run_directory_and_a_resume_continues_it(tiny_data, tmp_path,
                                                                                       monkeypatch, capfd):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    start(config(tiny_data, log__wandb="superpose-test"), run, stop=8)
    run_id = (run / "wandb_id").read_text().strip()
    (first,) = wandb_runs(run)
    assert first.name.endswith(run_id)
    keys = (b"superpose-test", b"train/loss", b"train/lr", b"train/grad_norm", b"eval/val_loss", b"events/switch",
            b"switch_step")
    # W&B's service process writes the run's file after `finish()` returns (seen: only its 7-byte
    # header when read at once on a loaded machine), so wait for it, up to a minute.
    deadline = time.monotonic() + 60
    while True:
        data = next(first.glob("run-*.wandb")).read_bytes()
        missing = [k for k in keys if k not in data]
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert not missing, missing
    resume(run)
    runs = wandb_runs(run)
    assert len(runs) == 2 and all(r.name.endswith(run_id) for r in runs)  # the same W&B run, continued
    # One row per step: an evaluation or a switch at a step already logged would be dropped by W&B
    # with a warning.
    assert "Tried to log" not in capfd.readouterr().err


def test_a_failing_tracker_is_dropped_with_one_warning_and_the_others_go_on():
    class Broken:
        name = "Broken"

        def write(self, record):
            raise OSError("disk full")

        def close(self):
            raise AssertionError("a dropped tracker is not closed")

    class Kept:
        name = "Kept"

        def __init__(self):
            self.got, self.closed = [], False

        def write(self, record):
            self.got.append(record)

        def close(self):
            self.closed = True

    warnings, kept = [], Kept()
    fan = tracking.Fanout([Broken(), kept], warnings.append)
    for step in range(3):
        fan.write({"type": "train", "step": step, "loss": 1.0})
    fan.close()
    assert len(kept.got) == 3 and kept.closed
    assert len(warnings) == 1 and "Broken tracking stopped (OSError: disk full)" in warnings[0]


def test_scalars_flatten_numbers_and_leave_out_what_has_no_scalar_form():
    rec = {"type": "train", "step": 3, "loss": None, "lr": 1e-3, "skipped": True, "phase": 0,
           "router": {"aux_loss": 0.5, "expert_load": [[0.5, 0.5]]}, "name": "x"}
    assert tracking.scalars(rec) == {"lr": 1e-3, "skipped": 1.0, "phase": 0.0, "router/aux_loss": 0.5}


def test_a_missing_tracker_library_is_one_line_before_anything_runs(tiny_data, tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("tensorboard", "wandb")
                        else real(name, *a))
    cfg = resolve("cpu-smoke", ["--log.tensorboard", "--log.wandb", "proj"])
    assert cfg.log.tensorboard and cfg.log.wandb == "proj"
    with pytest.raises(UserError) as e:
        tracking.check(cfg.log)
    assert "\n" not in str(e.value) and "superpose[track]" in str(e.value) and "--log.tensorboard" in str(e.value)
    # Through the CLI, in a process where the library cannot be found (a sitecustomize hides it):
    # exit 2, one line, no run directory.
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text("import importlib.util as u\n_find = u.find_spec\n"
                                           "u.find_spec = lambda n, *a: None if n == 'wandb' else _find(n, *a)\n")
    out = superpose("train", "--preset", "cpu-smoke", "--data.path", tiny_data, "--out", tmp_path / "r",
                    "--log.wandb=proj", env={"PYTHONPATH": str(hide)})
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().count("\n") == 0 and "--log.wandb=proj needs the wandb package" in out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "r").exists()


def test_a_bare_flag_turns_on_a_bool_and_is_refused_for_other_fields():
    assert resolve("cpu-smoke", ["--log.tensorboard", "--train.steps=5"]).log.tensorboard
    assert resolve("cpu-smoke", ["--train.compile", "--log.tensorboard"]).train.compile
    with pytest.raises(UserError, match="--log.wandb needs a value"):
        resolve("cpu-smoke", ["--log.wandb", "--train.steps=5"])
