"""Finding and loading a trained model (inference/load.py): what `locate` says about a path, and
what it refuses.

What this adds to test_generate_eval.py (a run, a checkpoint and a run with only checkpoints
load; a missing path, a file, a foreign folder, an HF folder and a run without a model refused;
no tokenizer anywhere) and test_reliability.py (damaged or NaN weights refused by every verb):
- `locate` describes each path right: kind, step, the run's config, the training context, and
  whether the weights are a phase-1 bag predictor, exactly up to and including the switch step;
- RUN_DIR/checkpoints itself means the newest checkpoint;
- the loaded model is the saved weights, float32, in eval mode, bit for bit;
- it refuses a model.json that does not describe a valid model, unreadable JSON, and a
  tokenizer in the data directory that is not the one the checkpoint recorded, each in one line;
- a run finished before checksums came in (no summary.json records) still loads;
- the run config comes back typed (`ModelFiles.run_config`, a `Config`): fields an older run did
  not record take Config's defaults, a config this superpose cannot read is one line;
- the special tokens come from the run's own record.

Run: .venv/bin/pytest tests/test_load.py
"""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from superpose.config import Config
from superpose.files import file_record
from superpose.inference.load import load_model, load_tokenizer, locate, special_tokens
from conftest import raises_one_line

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run(checkpointed_run):
    """An 8-step TST run of tiny_config (switch at step 4), checkpoints at 2, 4, 6, 8. Read only."""
    return checkpointed_run



@pytest.mark.parametrize("where,kind,step,phase1", [
    ("checkpoints/step-000002", "checkpoint", 2, True),
    ("checkpoints/step-000004", "checkpoint", 4, True),  # taken at the switch: every step was phase 1
    ("checkpoints/step-000006", "checkpoint", 6, False),
    ("", "run", 8, False),
])
def test_locate_describes_each_path(run, where, kind, step, phase1):
    src = locate(run / where)
    config = json.loads((run / "config.json").read_text())
    assert (src.kind, src.step, src.is_phase1, src.phase1_steps) == (kind, step, phase1, 4)
    assert src.path == (run / where if where else run) and src.config == config
    assert isinstance(src.run_config, Config) and src.run_config == Config.from_dict(config)
    assert src.model_config.to_dict() == config["model"]
    assert src.seq_len == config["data"]["seq_len"] == 16
    assert str(src.data_path) == config["data"]["path"]


def test_the_checkpoints_folder_means_the_newest_and_loads_the_saved_weights(run):
    assert locate(run / "checkpoints").name == "step-000008"
    for where in ("", "checkpoints/step-000006"):
        model = load_model(run / where)
        saved = load_file(str(run / where / "model.safetensors"))
        assert not model.training and saved.keys() == model.state_dict().keys()
        for k, v in model.state_dict().items():
            assert v.dtype == torch.float32 and torch.equal(v, saved[k]), (where, k)


def test_a_baseline_run_is_never_phase1(run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    config = json.loads((copy / "config.json").read_text())
    config["tst"]["ratio"] = 0.0
    (copy / "config.json").write_text(json.dumps(config))
    # config.json is checksummed in summary.json: record the edit, as a baseline run would have it.
    summary = json.loads((copy / "summary.json").read_text())
    summary["files"]["config.json"] = file_record(copy / "config.json")
    (copy / "summary.json").write_text(json.dumps(summary))
    src = locate(copy)
    assert src.phase1_steps == 0 and not src.is_phase1
    # A run without its config (an older layout, whose summary.json did not record one either):
    # nothing known about steps or phases.
    (copy / "config.json").unlink()
    del summary["files"]["config.json"]
    (copy / "summary.json").write_text(json.dumps(summary))
    src = locate(copy)
    assert (src.step, src.phase1_steps, src.is_phase1, src.data_path) == (None, 0, False, None)


@pytest.fixture
def final(run, tmp_path):
    """A copy of the run's final model without its checkpoints or summary (a run finished before
    superpose recorded checksums), to edit."""
    d = tmp_path / "final"
    d.mkdir()
    for name in ("model.safetensors", "model.json", "config.json", "tokenizer.json", "special_tokens.json"):
        shutil.copy(run / name, d / name)
    return d


def test_a_run_without_checksum_records_loads(final, run):
    x = torch.randint(0, 320, (1, 8))
    assert torch.equal(load_model(final)(x), load_model(run)(x))


@pytest.mark.parametrize("edit,needle", [
    (lambda m: m.update(dim=30), "describes an invalid model"),  # 30 is not a multiple of 4 heads
    (lambda m: m.update(vocab_size=0), "describes an invalid model"),
    (lambda m: m.update(n_wings=2), "does not describe a superpose model"),
])
def test_a_model_json_that_is_not_a_valid_model_is_refused(final, edit, needle):
    m = json.loads((final / "model.json").read_text())
    edit(m)
    (final / "model.json").write_text(json.dumps(m))
    raises_one_line(lambda: load_model(final), str(final / "model.json"), needle)


@pytest.mark.parametrize("name,what", [("model.json", "model architecture"), ("config.json", "run config")])
def test_unreadable_json_is_one_line(final, name, what):
    (final / name).write_text("{not json")
    raises_one_line(lambda: locate(final), f"cannot read {what} {final / name}", "damaged")


def test_a_checkpoint_refuses_a_tokenizer_it_was_not_trained_with(run, tmp_path, tiny_data):
    """A checkpoint copied away from its run falls back on its data directory's tokenizer, which
    must be the one its meta.json recorded."""
    ck = tmp_path / "elsewhere" / "checkpoints" / "step-000006"
    shutil.copytree(run / "checkpoints" / "step-000006", ck)
    assert load_tokenizer(ck).get_vocab() == load_tokenizer(run).get_vocab()  # the data's, recorded one
    data = json.loads((ck / "meta.json").read_text())["config"]["data"]["path"]
    assert data == str(tiny_data)
    other = tmp_path / "other-tokenizer.json"
    tok = json.loads((tiny_data / "tokenizer.json").read_text())
    tok["added_tokens"][0]["content"] = "<|other|>"
    other.write_text(json.dumps(tok))
    (ck / "tokenizer.json").write_text(other.read_text())  # in the checkpoint itself: trusted as given
    assert "<|other|>" in load_tokenizer(ck).get_vocab()
    (ck / "tokenizer.json").unlink()
    (ck.parent.parent / "tokenizer.json").write_text(other.read_text())  # the run directory's: checked
    raises_one_line(lambda: load_tokenizer(ck), "is not the tokenizer", "sha256 differs")


def test_special_tokens_come_from_the_runs_record(run, final):
    src = locate(run)
    assert special_tokens(load_tokenizer(src), src) == {"eot_id": 0, "prefix_ids": []}
    (final / "special_tokens.json").write_text(json.dumps({"eot_id": 5, "prefix_ids": [1]}))
    src = locate(final)
    assert special_tokens(load_tokenizer(src), src) == {"eot_id": 5, "prefix_ids": [1]}


def test_an_older_runs_config_loads_typed_with_the_defaults_for_what_it_lacks(final):
    """A config.json written before tst.mode, data.mix and the log section existed: the run loads,
    and what it lacks is Config's default (one place), not a literal at the reader."""
    config = json.loads((final / "config.json").read_text())
    del config["log"], config["tst"]["mode"], config["data"]["mix"], config["data"]["val_tokens"]
    (final / "config.json").write_text(json.dumps(config))
    src = locate(final)
    defaults = Config()
    assert (src.run_config.tst.mode, src.run_config.data.mix, src.run_config.log) == ("full", "", defaults.log)
    assert src.run_config.data.val_tokens == defaults.data.val_tokens
    assert src.run_config.train.steps == src.step == config["train"]["steps"]
    assert src.seq_len == config["data"]["seq_len"] and str(src.data_path) == config["data"]["path"]


@pytest.mark.parametrize("edit,needle", [
    (lambda c: c["train"].update(stepz=3), "unknown config key 'train.stepz'"),
    (lambda c: c["train"].update(steps="many"), "train.steps: expected int"),
    (lambda c: c.update(train=[1]), "its sections are not objects"),
])
def test_a_run_config_this_superpose_cannot_read_is_one_line(final, edit, needle):
    config = json.loads((final / "config.json").read_text())
    edit(config)
    (final / "config.json").write_text(json.dumps(config))
    raises_one_line(lambda: locate(final), f"{final / 'config.json'} holds a run config this superpose cannot read", needle)
