"""Building a run (training/build.py): build once, change nothing, depend on nothing but the config.

What this adds to test_trainer.py (the same seed gives the same initial weights in both arms; a
too-small model.vocab_size is refused) and test_reliability.py (a relative data path is stored
absolute; a run that failed before its first checkpoint starts again):
- build_trainer never changes the caller's config, whatever it resolves (the vocabulary from the
  data, a relative data.path or data.mix made absolute), nor after training;
- building writes nothing: no run directory, nothing in the data directory (tst.weights=mi on
  data without mi.json measures it in memory);
- the trainer depends on the config alone, not on the global RNG state or what ran before it;
- build_trainer(state=...) (compare's decay branches) is the trainer that state came from: the
  same state, and the same rest of the run, bit for bit;
- a CUDA device on a machine without one is refused in one line that names the fix.

Run: .venv/bin/pytest tests/test_build.py
"""

import copy
import json
import os
import shutil

import pytest
import torch

from superpose.data import open_dataset
from superpose.errors import UserError
from superpose.training import build_trainer
from superpose.training.build import resolve_device

from conftest import tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


def quiet(_):
    pass


def snapshot(d):
    """Every file of a directory with its bytes and modification time."""
    return {p.relative_to(d): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(d.rglob("*")) if p.is_file()}


def assert_same_state(a: dict, b: dict, where="", clocks=True):
    """Two `Trainer.state_dict()`s: equal weights, optimizer state, loader position, counters, RNG.
    clocks=False leaves out train_time_s (wall clock of two different sessions); elapsed_s is
    always left out (it is read live)."""
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), (where, k)
    oa, ob = a["optimizer"], b["optimizer"]
    assert oa["param_groups"] == ob["param_groups"] and oa["state"].keys() == ob["state"].keys()
    for i in oa["state"]:
        for k, v in oa["state"][i].items():
            assert torch.equal(v, ob["state"][i][k]), (where, i, k)
    assert a["loader"] == b["loader"], where
    ra, rb = dict(vars(a["run"])), dict(vars(b["run"]))
    for key in ("elapsed_s",) if clocks else ("elapsed_s", "train_time_s"):
        ra.pop(key), rb.pop(key)
    assert ra == rb, where
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"]), where


def test_build_never_changes_the_callers_config(tiny_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tiny_data.parent)
    cfg = tiny_config(tiny_data.name, train__steps=2)  # a relative data.path, model.vocab_size 0
    assert cfg.model.vocab_size == 0 and not os.path.isabs(cfg.data.path)
    before = copy.deepcopy(cfg.to_dict())
    t = build_trainer(cfg, tmp_path / "run", log=quiet)
    assert cfg.to_dict() == before
    assert t.cfg is not cfg and t.cfg.model is not cfg.model and t.cfg.data is not cfg.data
    assert t.cfg.model.vocab_size == 320 and t.cfg.data.path == str(tiny_data.absolute())
    t.train(progress=False)
    assert cfg.to_dict() == before
    assert json.loads((tmp_path / "run" / "config.json").read_text()) == t.cfg.to_dict()
    # A mixture given with relative paths: made absolute in the trainer's copy only.
    shutil.copytree(tiny_data, tiny_data.parent / "tiny-copy", dirs_exist_ok=True)
    mix = tiny_config(tiny_data.name, data__path="", data__mix="tiny=0.5,tiny-copy=0.5")
    before = copy.deepcopy(mix.to_dict())
    t = build_trainer(mix, tmp_path / "mix", log=quiet)
    assert mix.to_dict() == before and all(os.path.isabs(p.split("=")[0]) for p in t.cfg.data.mix.split(","))


def test_building_writes_nothing(tiny_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    (data / "mi.json").unlink()  # prepared before mi was measured: measured now, in memory
    before = snapshot(data)
    logs = []
    t = build_trainer(tiny_config(data, tst__weights="mi"), tmp_path / "run", open_dataset(data), log=logs.append)
    assert not (tmp_path / "run").exists()
    assert snapshot(data) == before
    assert t.mi_fit is not None and any("measuring now" in m for m in logs), logs


def test_the_trainer_depends_on_the_config_alone(tiny_data, tmp_path):
    """Global RNG state and a trainer built before it change nothing in the next one."""
    cfg = tiny_config(tiny_data)
    torch.manual_seed(1)
    a = build_trainer(cfg, tmp_path / "a", open_dataset(tiny_data), log=quiet)
    a_state = copy.deepcopy(a.state_dict())
    a.begin(progress=False)
    a.step_once()  # uses the RNG, moves the loader and the weights of `a` only
    torch.manual_seed(2)
    torch.randn(1000)
    b = build_trainer(cfg, tmp_path / "b", open_dataset(tiny_data), log=quiet)
    assert_same_state(a_state, b.state_dict())
    assert torch.equal(a.val, b.val) and torch.equal(a.token_bytes, b.token_bytes)
    assert (a.loss_chunk_rows, a.schedule.switch_step) == (b.loss_chunk_rows, b.schedule.switch_step)
    a.metrics.close()


def test_building_a_trainer_moves_no_other_stream(tiny_data, tmp_path):
    """compare builds several trainers in one process: building one leaves torch's global
    generators as they were, so it cannot change the stream another trainer (or the caller) draws."""
    cfg = tiny_config(tiny_data)
    torch.manual_seed(7)
    before = torch.get_rng_state()
    a = build_trainer(cfg, tmp_path / "a", open_dataset(tiny_data), log=quiet)
    assert torch.equal(torch.get_rng_state(), before)
    a_rng = a.progress()["rng"]["torch"].clone()
    build_trainer(tiny_config(tiny_data, train__seed=1), tmp_path / "b", open_dataset(tiny_data), log=quiet)
    assert torch.equal(torch.get_rng_state(), before) and torch.equal(a.progress()["rng"]["torch"], a_rng)
    # The run's own stream is the one the global generator seeded with train.seed gives.
    torch.manual_seed(cfg.train.seed)
    from superpose.core.model import build_model

    plain = build_model(a.cfg.model, torch.device("cpu"))
    assert all(torch.equal(x, y) for x, y in zip(plain.state_dict().values(), a.model.state_dict().values()))
    assert torch.equal(torch.get_rng_state(), a_rng)


@pytest.mark.parametrize("stop", [2, 5], ids=["phase1", "phase2"])
def test_a_trainer_built_from_a_state_is_the_trainer_it_came_from(tiny_data, tmp_path, stop):
    cfg = tiny_config(tiny_data)
    a = build_trainer(cfg, tmp_path / "a", open_dataset(tiny_data), log=quiet)
    a.begin(progress=False)
    while a.state.step < stop:
        a.step_once()
    snap = copy.deepcopy(a.state_dict())
    torch.manual_seed(123)  # whatever the global RNG holds, the state's RNG is the trainer's
    b = build_trainer(cfg, tmp_path / "b", open_dataset(tiny_data), log=quiet, state=snap)
    assert_same_state(snap, b.state_dict(), "after build")
    b.begin(progress=False)
    losses = []
    while a.state.step < cfg.train.steps:
        losses.append((a.step_once()["loss"], b.step_once()["loss"]))
    assert all(x == y for x, y in losses), losses
    assert_same_state(a.state_dict(), b.state_dict(), "at the end", clocks=False)
    a.metrics.close(), b.metrics.close()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_cuda_without_a_gpu_is_one_line(tiny_data, tmp_path):
    assert resolve_device("auto").type == "cpu" and resolve_device("cpu").type == "cpu"
    for name in ("cuda", "cuda:1"):
        with pytest.raises(UserError) as e:
            resolve_device(name)
        # One place checks devices (superpose/checks.py): one line naming the flag and the fix.
        assert "\n" not in str(e.value) and f"--train.device {name}" in str(e.value)
        assert "--train.device cpu" in str(e.value)
    with pytest.raises(UserError, match="--train.device cuda"):
        build_trainer(tiny_config(tiny_data, train__device="cuda"), tmp_path / "run", open_dataset(tiny_data),
                      log=quiet)
    assert not (tmp_path / "run").exists()
