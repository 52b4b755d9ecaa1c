"""Persisting a trainer (`Trainer.save_checkpoint` / `load_checkpoint`, training/save.py): what is saved is what is restored, and only into
the run it belongs to.

What this adds to test_checkpoint.py (resumed runs reproduce the uninterrupted run's losses,
evaluations and final weights; damaged, other-shape and other-vocabulary checkpoints refused;
crashes and full disks) and test_reliability.py (damaged final models refused by readers):
- a restored trainer *is* the saved one: weights, every optimizer moment and step count, loader
  position, RNG, and the counters no loss depends on (skipped steps, train time, the last
  evaluation), so a resume after a skipped NaN batch still counts it;
- after the resume the run ends in the same optimizer state and counters as the uninterrupted one
  (test_checkpoint compares losses and weights only);
- data may move (a copy elsewhere resumes), but another train split with the same tokenizer is
  refused, and the data fingerprint says why;
- weights with NaN are never saved over the last good checkpoint;
- an optimizer state that does not fit the model is refused in one line;
- the final save records each file's size and sha256 as the files are, and the final weights are
  the trainer's.

Run: .venv/bin/pytest tests/test_save_restore.py
"""

import copy
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from superpose.core.model import build_model, model_config
from superpose.data import corpus, open_dataset, open_mixture
from superpose.data.prepare import prepare
from superpose.errors import UserError
from superpose.files import sha256_file
from superpose.training import build as build_module
from superpose import checkpoint
from superpose.training import build_trainer
from superpose.training.resume import read_weights_and_optimizer
from superpose.training.optimizer import configure_optimizer

from conftest import make_documents, tiny_config
from test_build import assert_same_state

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = 8  # tiny_config: r = 0.5, the switch at step 4


def quiet(_):
    pass


def cfg_of(data, **kw):
    return tiny_config(data, train__on_nan="skip", **kw)


def nan_at(monkeypatch, steps):
    """The loss (and so every gradient) NaN at the given 0-based steps of a run built after this."""
    real, calls = build_module.model_loss, []

    def poisoned(*args, **kwargs):
        calls.append(1)
        loss = real(*args, **kwargs)
        return loss * float("nan") if len(calls) - 1 in steps else loss

    monkeypatch.setattr(build_module, "model_loss", poisoned)


def started(data, run_dir, stop):
    t = build_trainer(cfg_of(data), run_dir, open_dataset(data), log=quiet)
    t.begin(progress=False)
    while t.state.step < stop:
        t.step_once()
    return t


@pytest.mark.parametrize("stop", [4, 6], ids=["at-switch", "phase2"])
def test_a_restored_trainer_is_the_saved_one_and_ends_as_the_straight_run(tiny_data, tmp_path, monkeypatch, stop):
    nan_at(monkeypatch, {1})  # step 1's batch is skipped (train.on_nan=skip): a counter no loss shows
    a = started(tiny_data, tmp_path / "a", stop)
    assert a.state.skipped_steps == 1 and a.state.last_eval  # evaluated after step 3
    saved = copy.deepcopy(a.state_dict())
    path = a.save_checkpoint()
    monkeypatch.undo()
    b = build_trainer(cfg_of(tiny_data), tmp_path / "b", open_dataset(tiny_data), log=quiet)
    meta = b.load_checkpoint(path)
    assert meta["step"] == stop and meta["skipped_steps"] == 1
    assert_same_state(saved, b.state_dict(), "restored")
    assert b.state.elapsed_s == pytest.approx(saved["run"].elapsed_s, abs=1.0)
    # Both go on to the end: the same optimizer state, loader, counters and RNG (not only losses).
    b.begin(progress=False)
    while a.state.step < STEPS:
        assert a.step_once()["loss"] == b.step_once()["loss"]
    assert_same_state(a.state_dict(), b.state_dict(), "at the end", clocks=False)
    a.metrics.close(), b.metrics.close()


def test_data_may_move_but_not_change(tiny_data, tmp_path):
    a = started(tiny_data, tmp_path / "a", 2)
    path = a.save_checkpoint()
    a.metrics.close()
    moved = tmp_path / "moved"
    shutil.copytree(tiny_data, moved)
    assert open_dataset(moved).fingerprint() == open_dataset(tiny_data).fingerprint()
    build_trainer(cfg_of(moved), tmp_path / "b", open_dataset(moved), log=quiet).load_checkpoint(path)
    # The same tokenizer over other text: another train split, refused by its size.
    other = prepare(tmp_path / "other", [corpus.Source("x", "CC0", "generated", make_documents(300, 9))],
                    tokenizer=tiny_data / "tokenizer.json", val_fraction=0.05, log=quiet)
    fp = open_dataset(other).fingerprint()
    assert fp["tokenizer_sha256"] == open_dataset(tiny_data).fingerprint()["tokenizer_sha256"]
    c = build_trainer(cfg_of(other), tmp_path / "c", open_dataset(other), log=quiet)
    with pytest.raises(UserError) as e:
        c.load_checkpoint(path)
    msg = str(e.value)
    assert "\n" not in msg and "was trained on a train split of" in msg and f"{fp['train_tokens']}" in msg, msg
    # A mixture's fingerprint is its sources' (sizes and weights), summed for the totals.
    mix = open_mixture(f"{tiny_data}=3,{moved}=1").fingerprint()
    one = open_dataset(tiny_data).fingerprint()
    assert [s["weight"] for s in mix["sources"]] == [0.75, 0.25]
    assert mix["train_tokens"] == 2 * one["train_tokens"] and mix["val_tokens"] == 2 * one["val_tokens"]


def test_weights_with_nan_are_never_saved(tiny_data, tmp_path):
    t = started(tiny_data, tmp_path / "run", 2)
    good = t.save_checkpoint()
    before = {p.name: p.read_bytes() for p in good.iterdir()}
    t.step_once()
    with torch.no_grad():
        t.model.norm.weight[0] = float("inf")
    with pytest.raises(UserError) as e:
        t.save_checkpoint()
    assert "\n" not in str(e.value) and "NaN or Inf after step 2" in str(e.value)
    assert [s for s, _ in checkpoint.checkpoints(tmp_path / "run")] == [2]
    assert {p.name: p.read_bytes() for p in good.iterdir()} == before
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text() == "step-000002\n"
    t.metrics.close()


def test_an_optimizer_state_that_does_not_fit_is_refused(tiny_data, tmp_path):
    """optimizer.pt of another model (moments of other shapes in the same parameter groups)."""
    t = started(tiny_data, tmp_path / "run", 1)
    path = t.save_checkpoint()
    t.metrics.close()
    model = build_model(model_config(**t.cfg.model.to_dict()))
    wide = build_model(model_config(**{**t.cfg.model.to_dict(), "dim": 48, "ffn_dim": 0}))
    with pytest.raises(UserError) as e:
        read_weights_and_optimizer(path, model, configure_optimizer(wide, t.cfg), "cpu")
    assert "\n" not in str(e.value) and "optimizer.pt does not fit this model's optimizer" in str(e.value)
    # The right optimizer loads, and its moments are the saved ones.
    opt = configure_optimizer(model, t.cfg)
    read_weights_and_optimizer(path, model, opt, "cpu")
    for p, q in zip(model.parameters(), t.model.parameters()):
        assert torch.equal(p, q) and torch.equal(opt.state[p]["exp_avg"], t.optimizer.state[q]["exp_avg"])


def test_the_final_save_records_the_files_as_they_are(tiny_data, tmp_path):
    run = tmp_path / "run"
    t = build_trainer(tiny_config(tiny_data, train__steps=3), run, open_dataset(tiny_data), log=quiet)
    summary = t.train(progress=False)
    on_disk = json.loads((run / "summary.json").read_text())
    assert on_disk["files"] == summary["files"]
    # config.json is covered too (issue 22 item 7: an edited config would change eval results).
    assert set(on_disk["files"]) == {"model.safetensors", "model.json", "tokenizer.json", "config.json"}
    for name, rec in on_disk["files"].items():
        assert rec == {"bytes": (run / name).stat().st_size, "sha256": sha256_file(run / name)}, name
    assert sha256_file(run / "tokenizer.json") == sha256_file(tiny_data / "tokenizer.json")
    assert json.loads((run / "model.json").read_text()) == t.cfg.model.to_dict()
    weights = load_file(str(run / "model.safetensors"))
    assert weights.keys() == t.model.state_dict().keys()
    assert all(torch.equal(weights[k], v) for k, v in t.model.state_dict().items())
    assert not [p for p in run.iterdir() if ".tmp-" in p.name]
