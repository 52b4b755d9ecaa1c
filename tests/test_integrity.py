"""Nothing lost, nothing silently wrong (issue 22, items 1-9): train keeps out of folders that are
not its own and out of compare's and sweep's trees; reused experiment results match the config
asked for; every integrity record fails closed; a live run can be read; and the advice each
failure gives works when followed.

Each test names the item of issue 22 it covers; each failed on b653465.

Run: OMP_NUM_THREADS=1 .venv/bin/pytest -q tests/test_integrity.py
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from superpose import cli
from superpose.errors import UserError
from superpose.experiments.compare import compare
from superpose.experiments.sweep import sweep

from conftest import tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


def quiet(_):
    pass


@pytest.fixture
def cli_run(capsys):
    """`superpose ARGS` in this process: exit status and what it printed."""
    def run(*args):
        capsys.readouterr()
        code = cli.main([str(a) for a in args])
        out = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=out.out, stderr=out.err)
    return run


def one_line(proc, *needles) -> str:
    """Exit status 2, no traceback, exactly one error line holding every needle."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("superpose: error:")]
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def train_args(data: Path, out: Path, *extra) -> list[str]:
    """A tiny `superpose train` command line (tiny_config's model) into `out`."""
    return ["train", "--out", out, f"--data.path={data}", "--model.dim=32", "--model.n_layers=2", "--model.n_heads=4",
            "--model.n_kv_heads=2", "--model.max_seq_len=32", "--data.seq_len=16", "--data.val_tokens=1024",
            "--tst.bag_size=4", "--tst.ratio=0.5", "--optim.warmup_steps=2", "--train.steps=4",
            "--train.batch_size=4", "--train.eval_every=4", "--train.device=cpu", *extra]


# ----------------------------------------------------------------------------- item 1: foreign folders

@pytest.mark.parametrize("content", ["hf_export", "data_dir", "own_config"])
def test_train_out_refuses_a_folder_that_is_not_a_run_and_touches_nothing(tiny_data, tmp_path, cli_run, content):
    """Item 1: an exported model, a data directory or a user's config.json are not overwritten."""
    folder = tmp_path / "folder"
    if content == "data_dir":
        shutil.copytree(tiny_data, folder)
    else:
        folder.mkdir()
        (folder / "config.json").write_text('{"mine": true}\n')
        if content == "hf_export":
            (folder / "model.safetensors").write_bytes(b"weights")
            (folder / "tokenizer.json").write_text("{}")
    before = snapshot(folder)
    proc = cli_run(*train_args(tiny_data, folder, "--preset", "cpu-smoke"))
    one_line(proc, str(folder), "not a superpose run directory", "new or empty --out")
    assert snapshot(folder) == before and sorted(p.name for p in folder.iterdir()) == sorted(before)


def test_train_out_accepts_an_empty_folder_and_its_own_run_directory(tiny_data, tmp_path, cli_run):
    """Item 1: an empty folder is fine, and so is a run directory that stopped before its first
    checkpoint (it restarts in place)."""
    out = tmp_path / "empty"
    out.mkdir()
    assert cli_run(*train_args(tiny_data, out, "--preset", "cpu-smoke")).returncode == 0
    assert (out / "summary.json").is_file()
    again = tmp_path / "failed"
    again.mkdir()
    (again / ".superpose.lock").write_text("1\n")
    (again / "metrics.jsonl").write_text("")
    (again / "config.json").write_text("{}")
    assert cli_run(*train_args(tiny_data, again, "--preset", "cpu-smoke")).returncode == 0


# ----------------------------------------------------------------------------- item 2: experiments own their tree

def test_train_keeps_out_of_a_compare_tree_and_says_to_rerun_the_compare(tiny_data, tmp_path, cli_run):
    """Item 2: `train --out`/`--resume` on a compare's arm is refused, naming the compare to rerun;
    the arm's files stay as the compare wrote them."""
    cmp = tmp_path / "cmp1"
    compare(tiny_config(tiny_data), cmp, seeds=[0], factors=(1.0,), log=quiet, command="superpose compare X")
    arm = cmp / "seed-0" / "tst"
    assert arm.is_dir()
    before = snapshot(cmp)
    for args in (train_args(tiny_data, arm, "--preset", "cpu-smoke"), ["train", "--resume", arm],
                 train_args(tiny_data, cmp / "seed-1" / "tst", "--preset", "cpu-smoke"),
                 train_args(tiny_data, cmp, "--preset", "cpu-smoke")):
        one_line(cli_run(*args), str(cmp), "compare", "superpose compare X")
    assert snapshot(cmp) == before and not (cmp / "seed-1").exists()


def test_train_keeps_out_of_a_sweep_tree(tiny_data, tmp_path, cli_run):
    """Item 2: the same for a sweep's cells."""
    sw = tmp_path / "sw"
    sweep(tiny_config(tiny_data, train__steps=4), sw, [2], [0.5], seeds=[0], log=quiet, command="superpose sweep Y")
    cell = next((sw / "cells").iterdir())
    before = snapshot(sw)
    one_line(cli_run(*train_args(tiny_data, cell, "--preset", "cpu-smoke")), "sweep", "superpose sweep Y")
    one_line(cli_run("train", "--resume", cell), "sweep", "superpose sweep Y")
    assert snapshot(sw) == before


# ----------------------------------------------------------------------------- item 3: reused results match

def test_compare_rerun_with_other_settings_is_refused_naming_the_fields(tiny_data, tmp_path):
    """Item 3: a finished seed made with lr 3e-3, s=4 is not reported as lr 1e-3, s=2."""
    cmp = tmp_path / "cmp"
    compare(tiny_config(tiny_data), cmp, seeds=[0], factors=(1.0,), log=quiet)
    report = (cmp / "report.json").read_bytes()
    other = tiny_config(tiny_data, optim__lr=1e-3, tst__bag_size=2)
    with pytest.raises(UserError) as e:
        compare(other, cmp, seeds=[0], factors=(1.0,), log=quiet)
    assert "optim.lr" in str(e.value) and "tst.bag_size" in str(e.value) and "\n" not in str(e.value)
    assert (cmp / "report.json").read_bytes() == report
    logs = []  # the same settings (and a device or logging change) reuse the seed
    compare(tiny_config(tiny_data, train__log_every=7), cmp, seeds=[0], factors=(1.0,), log=logs.append)
    assert any("already done" in line for line in logs)


def test_sweep_rerun_with_other_settings_is_refused_naming_the_fields(tiny_data, tmp_path):
    """Item 3: 4-step cells are not labelled as 6-step ones."""
    sw = tmp_path / "sw"
    sweep(tiny_config(tiny_data, train__steps=4), sw, [2], [0.5], seeds=[0], log=quiet)
    grid = (sw / "sweep.json").read_bytes()
    with pytest.raises(UserError, match="train.steps=4 there, 6 now"):
        sweep(tiny_config(tiny_data, train__steps=6), sw, [2], [0.5], seeds=[0], log=quiet)
    assert (sw / "sweep.json").read_bytes() == grid
