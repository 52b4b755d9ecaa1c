"""Config files (issue 15, item 1): TOML, YAML and a run's own config.json, layered as preset <
file < --section.field overrides; --print-config shows the result without training; unknown keys
are all named in one line."""

import json

import pytest

from superpose.presets import resolve
from superpose.errors import UserError

from test_checkpoint import superpose

TOML = """
[model]
dim = 96
n_heads = 4
[train]
steps = 30
batch_size = 4
[tst]
schedule = "4:0.25,2:0.25"
"""
YAML = """
model:
  dim: 96
  n_heads: 4
train:
  steps: 30
  batch_size: 4
tst:
  schedule: "4:0.25,2:0.25"
"""


@pytest.mark.parametrize("name,text", [("run.toml", TOML), ("run.yaml", YAML)])
def test_file_sits_between_the_preset_and_the_overrides(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    cfg = resolve("cpu-smoke", ["--train.steps=40"], path)
    assert cfg.model.dim == 96 and cfg.tst.schedule == "4:0.25,2:0.25"  # the file over the preset
    assert cfg.model.n_layers == resolve("cpu-smoke", []).model.n_layers  # the preset where the file is silent
    assert cfg.train.steps == 40 and cfg.train.batch_size == 4  # the override over the file
    # No preset: the file over the defaults.
    assert resolve(None, [], path).data.seq_len == resolve(None, []).data.seq_len


def test_print_config_round_trips_and_a_run_directory_is_a_config(tmp_path):
    (tmp_path / "run.toml").write_text(TOML)
    r = superpose("train", "--preset", "cpu-smoke", "--config", tmp_path / "run.toml", "--train.seed=3",
                  "--print-config")
    assert r.returncode == 0, r.stderr
    printed = json.loads(r.stdout)
    assert printed["train"]["seed"] == 3 and printed["model"]["dim"] == 96
    (tmp_path / "printed.json").write_text(r.stdout)
    assert resolve(None, [], tmp_path / "printed.json").to_dict() == printed  # what it prints, it reads
    # A finished run's config.json (or its directory) is a base for the next run.
    run = tmp_path / "r"
    done = superpose("train", "--config", tmp_path / "printed.json", "--train.steps=4", "--out", run)
    assert done.returncode == 0, done.stderr
    again = resolve(None, ["--train.seed=4"], run)
    assert again.model.dim == 96 and again.train.steps == 4 and again.train.seed == 4


@pytest.mark.parametrize("name,text,needle", [
    ("bad.toml", "[model]\ndimm = 3\n[foo]\na = 1\n[train]\nstepz = 2\n",
     "unknown keys: model.dimm, foo, train.stepz"),
    ("bad.yaml", "model: [1, 2]\n", "must hold sections of fields"),
    ("broken.toml", "[model\n", "cannot parse config file"),
    ("wrong.toml", "[model]\ndim = 'wide'\n", "model.dim: expected int"),
    ("run.ini", "[model]\n", "use a .toml, .yaml, .yml, .json file"),
])
def test_bad_config_files_are_one_line(tmp_path, name, text, needle):
    (tmp_path / name).write_text(text)
    r = superpose("train", "--config", tmp_path / name, "--out", tmp_path / "r")
    assert r.returncode == 2 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "r").exists()
    with pytest.raises(UserError):
        resolve(None, [], tmp_path / name)


def test_resume_refuses_a_config_file(tmp_path):
    r = superpose("train", "--resume", tmp_path, "--config", tmp_path / "x.toml")
    assert r.returncode == 2 and "drop --preset, --config and --out" in r.stderr
