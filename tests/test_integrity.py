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

import pytest

from superpose.errors import UserError
from superpose.experiments.compare import compare
from superpose.experiments.sweep import sweep

from conftest import one_line, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


def quiet(_):
    pass


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def train_args(data: Path, out: Path, *extra) -> list[str]:
    """A tiny `superpose train` command line (tiny_config's model) into `out`."""
    return ["train", "--out", out, f"--data.path={data}", "--model.dim=32", "--model.n_layers=2", "--model.n_heads=4",
            "--model.n_kv_heads=2", "--model.max_seq_len=32", "--data.seq_len=16", "--data.val_tokens=1024",
            "--tst.bag_size=4", "--tst.ratio=0.5", "--optim.warmup_steps=2", "--train.steps=4",
            "--train.batch_size=4", "--train.eval_every=4", "--train.device=cpu", *extra]


# ----------------------------------------------------------------------------- item 1: foreign folders

def test_train_out_refuses_a_folder_that_is_not_a_run_and_touches_nothing(tiny_data, tmp_path, cli_run):
    """Item 1: an exported model, a data directory or a user's config.json are not overwritten;
    the advice (an empty folder) works, and a run that stopped before its first checkpoint still
    restarts in its own directory."""
    export, data, own = tmp_path / "hf_export", tmp_path / "data_dir", tmp_path / "own_config"
    shutil.copytree(tiny_data, data)
    for folder in (export, own):
        folder.mkdir()
        (folder / "config.json").write_text('{"mine": true}\n')
    (export / "model.safetensors").write_bytes(b"weights")
    (export / "tokenizer.json").write_text("{}")
    for folder in (export, data, own):
        before = snapshot(folder)
        proc = cli_run(*train_args(tiny_data, folder, "--preset", "cpu-smoke"))
        one_line(proc, str(folder), "not a superpose run directory", "new or empty --out")
        assert snapshot(folder) == before and sorted(p.name for p in folder.iterdir()) == sorted(before)
    (own / "config.json").unlink()  # the advice, followed
    assert cli_run(*train_args(tiny_data, own, "--preset", "cpu-smoke")).returncode == 0
    from superpose.training.ownership import RUN_MARK, mark_text

    failed = tmp_path / "failed"  # a run that stopped before its first checkpoint: its own directory (its mark)
    failed.mkdir()
    for name, text in ((RUN_MARK, mark_text("run")), ("metrics.jsonl", ""), ("config.json", "{}")):
        (failed / name).write_text(text)
    assert cli_run(*train_args(tiny_data, failed, "--preset", "cpu-smoke")).returncode == 0


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


# ----------------------------------------------------------------------------- item 4, 7: the final model fails closed

@pytest.fixture
def finished_run(checkpointed_run, tmp_path):
    """A private copy of conftest's finished run (checkpoints at steps 2, 4, 6, 8)."""
    run = tmp_path / "run"
    shutil.copytree(checkpointed_run, run)
    return run


def flip_byte(f: Path, at: int = -20) -> None:
    data = bytearray(f.read_bytes())
    data[at] ^= 0xFF
    f.write_bytes(bytes(data))


@pytest.mark.parametrize("files", [None, "missing", {}])
def test_a_summary_without_file_records_fails_closed(finished_run, tmp_path, cli_run, files):
    """Item 4: summary.json's files entry null, missing or empty no longer switches verification
    off: a flipped weight byte is neither evaluated nor exported with fresh checksums."""
    summary = json.loads((finished_run / "summary.json").read_text())
    if files == "missing":
        del summary["files"]
    else:
        summary["files"] = files
    (finished_run / "summary.json").write_text(json.dumps(summary))
    flip_byte(finished_run / "model.safetensors")
    for args in (["eval", finished_run], ["generate", finished_run, "--prompt", "the", "--max-new-tokens", "2"],
                 ["export", finished_run, "--hf", tmp_path / "hf"]):
        line = one_line(cli_run(*args), "summary.json", "cannot be verified")
        assert "step-000008 is intact" in line  # the way forward: the newest verified checkpoint
    assert not (tmp_path / "hf").exists()


def test_an_edited_run_config_is_caught(finished_run, cli_run):
    """Item 7: config.json decides what eval measures; an edit is caught like a damaged weight."""
    cfg = json.loads((finished_run / "config.json").read_text())
    cfg["data"]["val_tokens"] = 64
    (finished_run / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    one_line(cli_run("eval", finished_run), "config.json", "corrupt", "eval --data and --val-tokens")


def test_a_finished_run_without_its_final_model_says_so_and_resume_writes_it_again(finished_run, cli_run):
    """Items 7 and 9: a deleted final model is not silently replaced by a checkpoint, and the
    advice (resume) works: it writes the final model again, the same bytes."""
    weights = (finished_run / "model.safetensors").read_bytes()
    (finished_run / "model.safetensors").unlink()
    line = one_line(cli_run("eval", finished_run), "final model.safetensors is missing", "step-000008",
                    f"train --resume {finished_run}")
    assert "nothing to resume" not in line
    proc = cli_run("train", "--resume", finished_run)
    assert proc.returncode == 0, proc.stderr
    assert (finished_run / "model.safetensors").read_bytes() == weights
    assert cli_run("eval", finished_run).returncode == 0
    one_line(cli_run("train", "--resume", finished_run), "finished run", "nothing to resume")


# ----------------------------------------------------------------------------- item 9: advice that names a good checkpoint

def test_advice_after_a_corrupt_checkpoint_names_the_newest_one_that_verifies(finished_run, cli_run):
    """Item 9: with step 8 and step 6 corrupt (sizes intact), the advice skips to step 4 instead of
    naming step 6; with all corrupt it says none is good."""
    (finished_run / "model.safetensors").unlink()
    (finished_run / "summary.json").unlink()
    for step in (8, 6):
        flip_byte(finished_run / "checkpoints" / f"step-00000{step}" / "model.safetensors")
    line = one_line(cli_run("eval", finished_run / "checkpoints" / "step-000008"), "resume from step-000004")
    assert "step-000006" not in line
    for step in (4, 2):
        flip_byte(finished_run / "checkpoints" / f"step-00000{step}" / "optimizer.pt")
    one_line(cli_run("eval", finished_run / "checkpoints" / "step-000008"), "no older checkpoint is intact")


# ----------------------------------------------------------------------------- item 6: bag weights

@pytest.mark.parametrize("weights", [[1.0, float("nan"), 1.0, 1.0], [1.0, -1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0],
                                     [1.0, float("inf"), 1.0, 1.0]])
def test_nan_negative_or_all_zero_bag_weights_are_refused(weights):
    """Item 6: the loss refuses them (it returned nan), naming the weights."""
    import torch

    from superpose.core.superposition import chunked_multi_hot_cross_entropy, multi_hot_cross_entropy

    logits, targets = torch.randn(1, 2, 8), torch.randint(0, 8, (1, 2, 4))
    with pytest.raises(ValueError, match="bag weights must be 4 non-negative finite"):
        multi_hot_cross_entropy(logits, targets, torch.tensor(weights))
    with pytest.raises(ValueError, match="bag weights"):
        chunked_multi_hot_cross_entropy(torch.randn(1, 2, 4), torch.randn(8, 4), targets, torch.tensor(weights))


def test_tst_trainer_refuses_nan_bag_weights_before_training(tmp_path):
    """Item 6: TSTTrainer(bag_weights=[1, nan, 1, 1]) trained with loss 0.0 while every parameter
    turned NaN; now the constructor refuses it, naming the argument."""
    pytest.importorskip("transformers")
    import numpy as np
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, TrainingArguments

    from superpose.core.tst_spec import TSTSpec
    from superpose.interop.hf_trainer import TSTTrainer

    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32))
    args = TrainingArguments(output_dir=str(tmp_path / "hf"), max_steps=4, per_device_train_batch_size=2,
                             report_to=[], use_cpu=True)
    tokens = np.random.default_rng(0).integers(0, 64, 4096)
    for bad in ([1.0, float("nan"), 1.0, 1.0], torch.tensor([-1.0, 1.0, 1.0, 1.0]), {"a": 1e300, "k": -1.0}):
        with pytest.raises(ValueError, match="bag_weights"):
            TSTTrainer(model, args, train_tokens=tokens, seq_len=8, tst=TSTSpec(bag_size=4, ratio=0.5),
                       bag_weights=bad)


def test_an_mi_fit_that_overflows_is_refused_for_a_run(tiny_data, tmp_path, cli_run):
    """Item 6, the config path: tst.weights=mi with a fit whose weights overflow float32 (inf, then
    NaN losses) is one line, before anything trains."""
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    record = {"fit": {"a": 1e300, "k": -1.0, "c0": 0.0}, "distances": [1, 2, 3], "mi": [1.0, 0.5, 0.3]}
    (data / "mi.json").write_text(json.dumps(record))
    proc = cli_run(*train_args(data, tmp_path / "run", "--preset", "cpu-smoke", "--tst.weights=mi"))
    one_line(proc, "tst.weights=mi", "non-negative finite")


# ----------------------------------------------------------------------------- item 7: smaller silent ones

def test_integer_embeddings_and_negative_target_ids_are_refused():
    """Item 7: integer input took a floored mean; negative ids other than -100 were clamped into
    another token's loss."""
    import torch

    from superpose.core.superposition import multi_hot_cross_entropy, superpose_embeddings

    with pytest.raises(TypeError, match="embeds must be floating point"):
        superpose_embeddings(torch.arange(8).view(1, 4, 2), 2)
    targets = torch.tensor([[[1, -5], [2, -100]]])
    with pytest.raises(ValueError, match="negative id -5"):
        multi_hot_cross_entropy(torch.randn(1, 2, 8), targets)
    with pytest.raises(ValueError, match="negative id -3"):
        multi_hot_cross_entropy(torch.randn(1, 2, 8), torch.tensor([[[-3], [1]]]))
    multi_hot_cross_entropy(torch.randn(1, 2, 8), torch.tensor([[[1, -100], [2, 3]]]))  # -100 is fine


def test_eval_val_tokens_zero_is_refused(finished_run, cli_run):
    """Item 7: --val-tokens 0 silently meant the default."""
    one_line(cli_run("eval", finished_run, "--val-tokens", "0"), "--val-tokens", "got 0")


def test_lm_eval_refuses_a_negative_max_length(finished_run):
    """Item 7: superpose-lm-eval accepted max_length=-1."""
    pytest.importorskip("lm_eval")
    from superpose.interop.lm_eval_adapter import SuperposeLM

    with pytest.raises(UserError, match="max_length=-1 must be a whole number >= 1"):
        SuperposeLM.from_path(path=str(finished_run), max_length="-1")


# ----------------------------------------------------------------------------- item 9: full-disk advice that works

def _full_disk_at(monkeypatch, needle: str) -> None:
    """torch.save of a file whose path holds `needle` fails as a full disk does."""
    import errno

    import torch

    real = torch.save

    def full(obj, f, *a, **k):
        if needle in str(getattr(f, "name", f)):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, f, *a, **k)
    monkeypatch.setattr(torch, "save", full)


def test_full_disk_before_the_first_checkpoint_advises_a_restart_that_works(tiny_data, tmp_path, cli_run,
                                                                             monkeypatch):
    """Item 9: it said "resume", and resume then refused (nothing to resume)."""
    run = tmp_path / "run"
    _full_disk_at(monkeypatch, "step-000002")
    line = one_line(cli_run(*train_args(tiny_data, run, "--preset", "cpu-smoke", "--checkpoint.every=2")),
                    "no space left", "start it again with the command that started it")
    assert "--resume" not in line
    monkeypatch.undo()
    proc = cli_run(*train_args(tiny_data, run, "--preset", "cpu-smoke", "--checkpoint.every=2"))
    assert proc.returncode == 0, proc.stderr  # the advice, followed
    assert (run / "summary.json").is_file()


def test_out_of_inodes_does_not_ask_to_free_a_negative_amount(tiny_data, tmp_path, cli_run, monkeypatch):
    """Item 9: with bytes free but no inodes, the advice said "free at least -13.1 MB"."""
    from superpose import files

    run = tmp_path / "run"
    _full_disk_at(monkeypatch, "step-000004")
    monkeypatch.setattr(files, "free_bytes", lambda path: 10 ** 12)
    line = one_line(cli_run(*train_args(tiny_data, run, "--preset", "cpu-smoke", "--checkpoint.every=2")),
                    "no room for more files", "inodes", f"--resume {run}")
    assert "free at least -" not in line


def test_compare_on_a_full_disk_advises_rerunning_the_compare(tiny_data, tmp_path, monkeypatch):
    """Item 9: compare's full-disk line advised `train --resume` on an arm, which item 2 refuses."""
    import safetensors.torch
    from safetensors import SafetensorError

    real = safetensors.torch.save_file

    def full(tensors, filename, *a, **k):
        if "seed-1" in str(filename):
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return real(tensors, filename, *a, **k)
    monkeypatch.setattr(safetensors.torch, "save_file", full)
    cmp = tmp_path / "cmp"
    with pytest.raises(UserError) as e:
        compare(tiny_config(tiny_data), cmp, seeds=[0, 1], factors=(1.0,), log=quiet, command="superpose compare Z")
    msg = str(e.value)
    assert "train --resume" not in msg and "run superpose compare Z again" in msg and "\n" not in msg, msg
    monkeypatch.undo()
    logs = []  # the advice, followed: seed 0 is reused, seed 1 restarts
    compare(tiny_config(tiny_data), cmp, seeds=[0, 1], factors=(1.0,), log=logs.append, command="superpose compare Z")
    assert any("seed 0 already done" in line for line in logs) and (cmp / "report.json").is_file()


# ----------------------------------------------------------------------------- item 8: a live run can be read

@pytest.fixture
def unfinished_run(finished_run):
    """The finished run without its final model: readers take its newest checkpoint, as of a run
    still training."""
    for name in ("model.safetensors", "summary.json"):
        (finished_run / name).unlink()
    return finished_run


def test_a_checkpoint_being_read_is_not_pruned_until_the_reader_is_done(unfinished_run):
    """Item 8: the writer's prune skips a checkpoint a reader holds and takes it at a later save."""
    import gc

    from superpose.checkpoint import checkpoints
    from superpose.inference.load import locate
    from superpose.training.save import prune

    src = locate(unfinished_run / "checkpoints" / "step-000002")
    prune(unfinished_run, 1)
    assert [s for s, _ in checkpoints(unfinished_run)] == [2, 8]
    del src
    gc.collect()
    prune(unfinished_run, 1)
    assert [s for s, _ in checkpoints(unfinished_run)] == [8]


def test_a_reader_whose_newest_checkpoint_is_pruned_takes_the_next_newest(unfinished_run, monkeypatch, cli_run):
    """Item 8: pruned between the listing and the read, the newest checkpoint is not reported as
    damaged (with advice to train again): the reader reads the listing again."""
    from superpose import checkpoint

    real = checkpoint.read_meta

    def pruned_first(path):
        if Path(path).name == "step-000008" and Path(path).is_dir():
            shutil.rmtree(path)  # what the live run's writer does, at the worst moment
        return real(path)
    monkeypatch.setattr(checkpoint, "read_meta", pruned_first)
    proc = cli_run("eval", unfinished_run)
    assert proc.returncode == 0, proc.stderr
    assert "step 6" in proc.stdout


def test_eval_of_a_run_that_is_training(tiny_data, tmp_path, cli_run):
    """Item 8, as reported: evals of a live run (a checkpoint every step, keep=2) all succeed;
    none says the run is lost."""
    import subprocess
    import sys
    import time

    run = tmp_path / "live"
    cmd = [sys.executable, "-m", "superpose", *map(str, train_args(tiny_data, run, "--preset", "cpu-smoke")),
           "--train.steps=100000", "--checkpoint.every=1", "--checkpoint.keep=2", "--train.eval_every=0"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    trainer = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.time() + 600  # a busy machine starts torch slowly
        while not (run / "checkpoints" / "latest").is_file():
            assert trainer.poll() is None and time.time() < deadline, trainer.stderr.read() if trainer.poll() else ""
            time.sleep(0.2)
        for _ in range(4):  # (export refuses phase-1 checkpoints, so eval stands for every reader: one `locate`)
            proc = cli_run("eval", run, "--val-tokens", "64")
            assert proc.returncode == 0, proc.stderr
        assert trainer.poll() is None  # the run went on meanwhile
    finally:
        trainer.kill()
        trainer.wait()


# ----------------------------------------------------------------------------- item 5: a data directory is tied together


def test_prepare_records_the_tokenizer_and_every_data_file(data_copy):
    """Item 5: meta.json records the tokenizer's sha256 and each shard's and train.docs.npy's size
    and sha256."""
    from superpose.files import file_record, sha256_file

    meta = json.loads((data_copy / "meta.json").read_text())
    assert meta["tokenizer_sha256"] == sha256_file(data_copy / "tokenizer.json")
    names = [*meta["splits"]["train"]["shards"], *meta["splits"]["val"]["shards"], "train.docs.npy"]
    assert meta["files"] == {n: file_record(data_copy / n) for n in names}


def test_a_swapped_tokenizer_is_refused_before_training(data_copy, tmp_path, cli_run):
    """Item 5: another tokenizer.json trained without complaint (val_bpb 2.0 instead of 0.8)."""
    tok = json.loads((data_copy / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    a, b = list(vocab)[300:302]
    vocab[a], vocab[b] = vocab[b], vocab[a]  # the same tokens, two ids swapped
    (data_copy / "tokenizer.json").write_text(json.dumps(tok))
    one_line(cli_run(*train_args(data_copy, tmp_path / "run", "--preset", "cpu-smoke")),
             f"{data_copy / 'tokenizer.json'} is not the tokenizer this data's tokens were made with")
    assert not (tmp_path / "run" / "config.json").exists()


@pytest.mark.parametrize("name", ["train.docs.npy", "train-00000.bin", "val-00000.bin"])
def test_a_damaged_data_file_of_the_same_size_is_refused(data_copy, tmp_path, cli_run, name):
    """Item 5: a flipped byte in train.docs.npy (or a shard) was not detected."""
    flip_byte(data_copy / name, -3)
    one_line(cli_run(*train_args(data_copy, tmp_path / "run", "--preset", "cpu-smoke")),
             f"{data_copy / name} is corrupt (sha256 differs from meta.json)", "re-run superpose prepare")
