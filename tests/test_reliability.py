"""Never lose a run (issue 16): one writer per run directory, verified reads, a way forward after
every failure, and one line instead of a traceback for each mistake.

Each test names the numbered item of issue 16 it covers; each failed on the code before the fix.
Full disks and wall-clock checkpoints are in test_checkpoint.py (they reuse its reference run).
Concurrency is tested with two real `superpose` processes.

Run: .venv/bin/pytest tests/test_reliability.py
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from safetensors.torch import load_file, save_file

from superpose import files
from superpose.config import Config
from superpose.presets import resolve
from superpose.data.prepare import prepare
from superpose.inference.load import load_model
from superpose.training import build as build_module
from superpose import checkpoint
from superpose.training import run_training
from superpose.training.resume import resume_config

import faults
from conftest import one_line, raises_one_line, tiny_config, tiny_sources

pytestmark = pytest.mark.usefixtures("one_thread")


def quiet(_):
    pass


def superpose(*args, env=None, cwd=None, timeout=300):
    return subprocess.run(faults.cli(*args), capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), **(env or {})}, cwd=cwd,
                          timeout=timeout)



def tiny_args(data, out, *extra):
    """`superpose train` of a ~30k-parameter model on the tiny data: seconds."""
    return ["train", "--preset", "cpu-smoke", "--out", out, "--data.path", data, "--data.seq_len=16",
            "--data.val_tokens=256", "--train.batch_size=2", "--model.dim=32", "--train.threads=1", *extra]


@pytest.fixture
def run(checkpointed_run, tmp_path):
    """A copy of a finished 8-step run with checkpoints at steps 2, 4, 6 and 8."""
    r = tmp_path / "run"
    shutil.copytree(checkpointed_run, r)
    return r


# ----------------------------------------------------------------------------- 2. one writer per run

def test_a_second_writer_is_refused_naming_the_holder_and_kill_9_leaves_no_stale_lock(tiny_data, tmp_path):
    """Item 2: two `train --out` (or `--resume`) on one directory used to both run, writing every
    step twice. The first holds an OS lock; the second is refused naming its pid. After kill -9
    of the holder, the kernel has dropped the lock: the next command runs."""
    run = tmp_path / "race"
    first = subprocess.Popen([sys.executable, "-m", "superpose", *map(str, tiny_args(tiny_data, run,
                              "--train.steps=100000", "--train.seed=1"))], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        deadline = time.time() + 120
        while not ((run / "metrics.jsonl").is_file() and (run / "metrics.jsonl").read_text().count("\n") >= 2):
            assert first.poll() is None and time.time() < deadline, first.stderr.read()
            time.sleep(0.2)
        second = superpose(*tiny_args(tiny_data, run, "--train.steps=4", "--train.seed=2"))
        one_line(second, f"{run} is in use", f"(pid {first.pid})")
        one_line(superpose("train", "--resume", run), f"(pid {first.pid})")
        assert {json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()[:2]} == {0, 1}
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # No checkpoint was written (every=0, killed): starting again in place works (item 6), the lock is free.
    again = superpose(*tiny_args(tiny_data, run, "--train.steps=2"))
    assert again.returncode == 0, again.stderr
    assert "stopped before its first checkpoint" in again.stderr and (run / "metrics.jsonl.failed-1").is_file()


def test_the_lock_is_reentrant_in_a_process_and_exclusive_across_processes(tmp_path):
    with files.lock_dir(tmp_path / "d", "run") as lock:
        assert files.lock_dir(tmp_path / "d", "run") is lock  # run_training inside cmd_train's lock
        lock.release()
        probe = subprocess.run([sys.executable, "-c", "import sys; from superpose import files; "
                                f"files.lock_dir({str(tmp_path / 'd')!r}, 'run')"], capture_output=True, text=True,
                               env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
        assert probe.returncode != 0 and f"(pid {os.getpid()})" in probe.stderr, probe.stderr
    probe = subprocess.run([sys.executable, "-c", "from superpose import files; "
                            f"files.lock_dir({str(tmp_path / 'd')!r}, 'run')"], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert probe.returncode == 0, probe.stderr


def test_compare_and_sweep_take_the_lock_of_their_directory(tiny_data, tmp_path):
    """Item 2: compare and sweep arms are written under one lock on the experiment directory."""
    out = tmp_path / "exp"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from superpose import files; "
                               f"files.lock_dir({str(out)!r}, 'compare directory'); print('held', flush=True); "
                               "time.sleep(120)"], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert holder.stdout.readline().strip() == "held"
        small = ["--data.path", tiny_data, "--data.seq_len=16", "--data.val_tokens=256", "--train.steps=4",
                 "--train.batch_size=2", "--model.dim=32", "--optim.warmup_steps=1"]
        one_line(superpose("compare", "--preset", "cpu-smoke", "--out", out, "--seeds", "1", *small),
                 f"{out} is in use", f"(pid {holder.pid})")
        one_line(superpose("sweep", "--preset", "cpu-smoke", "--out", out, "--bag-sizes", "2", "--ratios", "0.5",
                           *small), f"(pid {holder.pid})")
        assert sorted(p.name for p in out.iterdir()) == [files.LOCK_NAME]
    finally:
        holder.kill()
        holder.wait()


# ----------------------------------------------------------------------------- 3, 4. verified reads

def test_eval_of_a_damaged_final_model_points_at_the_intact_checkpoint(run, cli_run):
    """Item 3: a truncated model.safetensors used to get "start the run again (no older
    checkpoint)" although every checkpoint was intact."""
    weights = run / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    for verb in (["eval", run], ["generate", run, "--prompt", "the", "--max-new-tokens", "2"],
                 ["export", run, "--hf", run.parent / "hf"]):
        proc = cli_run(*verb)
        one_line(proc, f"{weights} is truncated or corrupt", f"checkpoint {run / 'checkpoints' / 'step-000008'} "
                 "is intact", f"--resume {run}")
        assert proc.stdout == ""
    # The advice works: the checkpoint evaluates.
    assert cli_run("eval", run / "checkpoints" / "step-000008").returncode == 0


def _poison(path, reseal):
    """A NaN written into a checkpoint's weights; reseal=True updates meta.json's records as a
    run that saved NaN weights would have them, so only the values can tell."""
    tensors = load_file(str(path / "model.safetensors"))
    tensors["norm.weight"][3] = float("nan")
    save_file(tensors, str(path / "model.safetensors"))
    if reseal:
        meta = json.loads((path / "meta.json").read_text())
        meta["files"]["model.safetensors"] = files.file_record(path / "model.safetensors")
        meta["checksum"] = checkpoint.meta_checksum(meta)
        (path / "meta.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("reseal", [False, True], ids=["bytes-changed", "nan-recorded"])
def test_export_eval_generate_refuse_a_checkpoint_with_nan(run, tmp_path, reseal, cli_run):
    """Item 4: a checkpoint with a NaN in model.safetensors used to export with exit 0 and
    evaluate to val_loss nan. Every read path verifies checksums and refuses non-finite weights."""
    ck = run / "checkpoints" / "step-000008"
    _poison(ck, reseal)
    needle = "holds NaN or Inf in norm.weight" if reseal else "is corrupt (sha256 differs from meta.json)"
    hf = tmp_path / "hf"
    for verb in (["export", ck, "--hf", hf], ["eval", ck], ["generate", ck, "--prompt", "the"]):
        one_line(cli_run(*verb), f"{ck / 'model.safetensors'}", needle, "to resume from step-000006")
    assert not hf.exists() or not any(hf.iterdir())
    raises_one_line(lambda: load_model(ck), needle)


def test_init_from_hf_verifies_an_exported_folder(run, tiny_data, tmp_path, cli_run):
    """Item 4: `--init-from-hf` of a folder superpose exported checks its recorded checksums."""
    hf = tmp_path / "hf"
    assert cli_run("export", run, "--hf", hf).returncode == 0
    assert json.loads((hf / "superpose_checksums.json").read_text())["files"]["model.safetensors"]["bytes"] > 0
    tensors = load_file(str(hf / "model.safetensors"))
    tensors["model.norm.weight"][0] = float("inf")
    save_file(tensors, str(hf / "model.safetensors"), metadata={"format": "pt"})
    one_line(cli_run("train", "--preset", "cpu-smoke", "--out", tmp_path / "ft", "--init-from-hf", hf,
                       "--data.path", tiny_data, "--train.steps=1"),
             f"{hf / 'model.safetensors'} is missing, truncated or corrupt", "superpose_checksums.json")
    assert not (tmp_path / "ft" / "metrics.jsonl").exists()


# ----------------------------------------------------------------------------- 5. the default corpus

def test_eval_generate_export_on_a_run_trained_on_the_default_corpus(tiny_data, tmp_path, monkeypatch, cli_run):
    """Item 5: the README's first run (no --data.path) could not be evaluated: "does not record its
    data directory". The run resolves the default corpus as training did ($SUPERPOSE_CACHE)."""
    cache = tmp_path / "cache"
    shutil.copytree(tiny_data, cache / "data" / "default-v320")  # a prepared default corpus, offline
    monkeypatch.setenv("SUPERPOSE_CACHE", str(cache))
    run = tmp_path / "run"
    args = ["--data.vocab_size=320", "--data.seq_len=16", "--data.val_tokens=256", "--train.batch_size=2",
            "--model.dim=32", "--train.threads=1", "--train.steps=2"]
    proc = cli_run("train", "--preset", "cpu-smoke", "--out", run, *args)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((run / "config.json").read_text())["data"]["path"] == ""
    ev = cli_run("eval", run)
    assert ev.returncode == 0, ev.stderr
    assert str(cache / "data" / "default-v320") in ev.stdout and "val_loss" in ev.stdout
    summary = json.loads((run / "summary.json").read_text())
    assert f"val_loss {summary['val_loss']:.4f}" in ev.stdout  # the same windows the trainer scored
    gen = cli_run("generate", run, "--prompt", "The cat", "--max-new-tokens", "4", "--seed", "1")
    assert gen.returncode == 0 and gen.stdout.startswith("The cat"), gen.stderr
    exp = cli_run("export", run, "--hf", tmp_path / "hf")
    assert exp.returncode == 0 and (tmp_path / "hf" / "model.safetensors").is_file(), exp.stderr
    # A checkpoint of such a run finds its tokenizer too (the run directory has it from the start).
    ck_run = tmp_path / "ck-run"
    proc = cli_run("train", "--preset", "cpu-smoke", "--out", ck_run, *args, "--checkpoint.every=1")
    assert proc.returncode == 0, proc.stderr
    assert cli_run("eval", ck_run / "checkpoints" / "step-000001").returncode == 0


# ----------------------------------------------------------------------------- 6. a way forward

def test_a_run_that_failed_before_its_first_checkpoint_can_go_on(tiny_data, tmp_path, monkeypatch):
    """Item 6: NaN at step 1 with checkpoint.every=0. `--out` used to say "continue it with
    --resume" and `--resume` "has no checkpoints": a dead end. Now --resume says how to go on and
    the same --out starts the run again, keeping the old log."""
    run = tmp_path / "run"
    real = build_module.model_loss
    monkeypatch.setattr(build_module, "model_loss", lambda *a, **k: real(*a, **k) * float("nan"))
    raises_one_line(lambda: run_training(tiny_config(tiny_data, train__steps=4), run, log=quiet),
                    "loss is nan", "no checkpoint was written")
    monkeypatch.undo()
    raises_one_line(lambda: resume_config(run), "stopped before its first checkpoint, so there is nothing to resume",
                    f"--out {run}")
    logs = []
    run_training(tiny_config(tiny_data, train__steps=4), run, log=logs.append)
    assert any("starting it again from step 0, its log kept as metrics.jsonl.failed-1" in m for m in logs), logs
    assert (run / "summary.json").is_file() and "non_finite" in (run / "metrics.jsonl.failed-1").read_text()
    raises_one_line(lambda: run_training(tiny_config(tiny_data, train__steps=4), run, log=quiet),
                    "already holds a run")  # a finished run is never started over


# ----------------------------------------------------------------------------- 7. leftovers

def test_leftovers_of_a_killed_prepare_or_save_are_removed_and_said(tiny_data, tmp_path):
    """Item 7: a killed `superpose prepare` left `.NAME.tmp-PID/` with its shards; a rerun never
    removed it. (The pid below is of a process that is gone; the lock proves no one uses it.)"""
    out = tmp_path / "data"
    leftover = tmp_path / ".data.tmp-4194301"
    leftover.mkdir()
    (leftover / "train-00000.bin").write_bytes(b"\0" * 100_000)
    logs = []
    prepare(out, tiny_sources(), vocab_size=320, val_fraction=0.05, log=logs.append)
    assert not leftover.exists() and not (tmp_path / ".data.lock").exists()
    assert any("removed .data.tmp-4194301 (0.1 MB), left by an interrupted prepare" in m for m in logs), logs
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    # A save killed mid-write of the final model leaves `.model.safetensors.tmp-PID` in the run
    # (a run's, by the mark it wrote first).
    from superpose.training.ownership import RUN_MARK, mark_text

    run = tmp_path / "run"
    run.mkdir()
    (run / RUN_MARK).write_text(mark_text("run"))
    (run / ".model.safetensors.tmp-4194301").write_bytes(b"half")
    logs = []
    run_training(tiny_config(tiny_data, train__steps=2), run, log=logs.append)
    assert not (run / ".model.safetensors.tmp-4194301").exists()
    assert any("removed leftovers of an interrupted write" in m for m in logs), logs


def test_a_real_sigkill_of_prepare_is_cleaned_by_the_next_one(tmp_path):
    """Item 7 with a real process: SIGKILL `superpose prepare` once it has started writing."""
    texts = tmp_path / "texts"
    texts.mkdir()
    for i, doc in enumerate(d for s in tiny_sources() for d in s.iter_documents()):
        (texts / f"{i}.txt").write_text(doc * 20)
    cmd = [sys.executable, "-m", "superpose", "prepare", "--out", str(tmp_path / "d"), "--text", str(texts),
           "--vocab-size", "300"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 120
    while not list(tmp_path.glob(".d.partial/tokenizer.json")):
        assert p.poll() is None and time.time() < deadline, "prepare ended before it could be killed"
        time.sleep(0.05)
    p.kill()
    p.wait()
    assert list(tmp_path.glob(".d.partial")) and not (tmp_path / "d" / "meta.json").exists()
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "left by an interrupted prepare" in again.stderr and not list(tmp_path.glob(".d.*"))


# ----------------------------------------------------------------------------- 8. non-finite values

FLOAT_FIELDS = [f"{section}.{name}" for section, fields in Config().to_dict().items()
                for name, value in fields.items() if isinstance(value, float)]


@pytest.mark.parametrize("value", ["inf", "nan", "-inf"])
def test_every_float_field_must_be_finite(value):
    """Item 8: --optim.lr=inf passed validation (inf > 0) and step 0 applied an infinite update;
    with on_nan=skip the run ended with exit 0 and a NaN model. Every float field is checked."""
    assert {"optim.lr", "optim.weight_decay", "tst.ratio", "model.rope_theta",
            "checkpoint.every_minutes"} <= set(FLOAT_FIELDS)
    msg = raises_one_line(lambda: resolve("cpu-smoke", [f"--{k}={value}" for k in FLOAT_FIELDS]))
    for key in FLOAT_FIELDS:
        assert f"{key}: must be a finite number, got {float(value)}" in msg, key


def test_infinite_lr_and_nan_temperature_are_one_line(tmp_path, run, cli_run):
    one_line(cli_run("train", "--preset", "cpu-smoke", "--out", tmp_path / "r", "--optim.lr=inf",
                       "--optim.weight_decay=inf", "--train.on_nan=skip"),
             "optim.lr: must be a finite number, got inf", "optim.weight_decay: must be a finite number")
    assert not (tmp_path / "r").exists()
    proc = cli_run("generate", run, "--prompt", "The cat", "--temperature", "nan")
    one_line(proc, "--temperature must be >= 0 and finite (0 = greedy), got nan")
    assert proc.stdout == ""  # item 10: nothing printed before the arguments are checked
    one_line(cli_run("compare", "--preset", "cpu-smoke", "--out", tmp_path / "c", "--baseline-lengths", "1,inf"),
             "--baseline-lengths takes finite numbers")


# ----------------------------------------------------------------------------- 9. one line, not a traceback

def test_corrupt_tokenizer_in_a_data_folder_or_a_run_folder(tiny_data, run, tmp_path, cli_run):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    (data / "tokenizer.json").write_bytes((data / "tokenizer.json").read_bytes()[:500])
    # A data directory records its tokenizer's sha256 (issue 22), so the damage is caught on open.
    one_line(cli_run(*tiny_args(data, tmp_path / "r", "--train.steps=1")),
             f"{data / 'tokenizer.json'} is not the tokenizer this data's tokens were made with")
    (run / "tokenizer.json").write_bytes(b"\xff\xfe not json")
    one_line(cli_run("eval", run), f"{run / 'tokenizer.json'} is truncated or corrupt",
             f"copy the tokenizer.json of the data directory the run trained on ({tiny_data})")


def test_out_naming_an_existing_file_is_one_line(tiny_data, tmp_path, cli_run):
    target = tmp_path / "a-file"
    target.write_text("mine")
    one_line(cli_run(*tiny_args(tiny_data, target, "--train.steps=1")), f"{target} is a file")
    one_line(cli_run("prepare", "--out", target, "--text", tmp_path), f"{target} is a file")
    assert target.read_text() == "mine"


def test_a_batch_too_large_for_memory_is_one_line(tiny_data, tmp_path, cli_run):
    one_line(cli_run(*tiny_args(tiny_data, tmp_path / "r", "--train.batch_size=10000000000", "--train.steps=1")),
             "out of memory", "lower --train.batch_size")


def test_disk_full_during_prepare_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    """Item 9: a full disk during prepare (the shard writer's ENOSPC) was a traceback."""
    import errno

    from superpose.data import shards

    real = shards.ShardWriter.write

    def full(self, tokens, **kw):
        if self.prefix == "val":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, tokens, **kw)

    monkeypatch.setattr(shards.ShardWriter, "write", full)
    raises_one_line(lambda: prepare(tmp_path / "d", tiny_sources(), vocab_size=320, log=quiet),
                    f"no space left on device while writing the data directory {tmp_path / 'd'}",
                    "the finished shards are kept", "run the same superpose prepare again to continue")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".d.partial"]  # no `d`: nothing looks finished
    monkeypatch.setattr(shards.ShardWriter, "write", real)  # space freed: the same command finishes the job
    prepare(tmp_path / "d", tiny_sources(), vocab_size=320, log=quiet)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


# ----------------------------------------------------------------------------- 10. smaller ones

def test_relative_data_path_is_stored_absolute_and_resume_works_from_elsewhere(tiny_data, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(tiny_data, work / "data")
    proc = superpose(*tiny_args("data", "run", "--train.steps=4", "--checkpoint.every=2"), cwd=work,
                     env={"SUPERPOSE_TEST_SIGNAL_AT_STEP": "2:SIGTERM"})
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr
    assert json.loads((work / "run" / "config.json").read_text())["data"]["path"] == str(work / "data")
    proc = superpose("train", "--resume", work / "run", cwd=tmp_path)  # another working directory
    assert proc.returncode == 0, proc.stderr


def test_resume_accepts_an_override_equal_to_the_stored_value(checkpointed_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(checkpointed_run, run)
    (run / "summary.json").unlink()
    cfg = resume_config(run, ["--optim.lr=0.003", "--tst.bag_size", "4", "--train.eval_every=3"])
    assert (cfg.optim.lr, cfg.train.eval_every) == (3e-3, 3)
    raises_one_line(lambda: resume_config(run, ["--optim.lr=0.004"]), "--optim.lr cannot change")


def test_data_vocab_size_beside_data_path_is_not_silently_ignored(tiny_data, tmp_path, cli_run):
    """Item 10: --data.vocab_size beside --data.path used to be ignored without a word."""
    proc = cli_run(*tiny_args(tiny_data, tmp_path / "r", "--data.vocab_size=8192", "--train.steps=1"))
    assert proc.returncode == 0, proc.stderr
    assert "warning: --data.vocab_size=8192 is ignored" in proc.stderr and "brings its own (320 tokens)" in proc.stderr
    proc = cli_run(*tiny_args(tiny_data, tmp_path / "r2", "--data.vocab_size=320", "--train.steps=1"))
    assert proc.returncode == 0 and "warning: --data.vocab_size" not in proc.stderr, proc.stderr  # agrees with the data: used


def test_generate_checks_its_arguments_before_printing_the_prompt(run, cli_run):
    for bad in (["--max-new-tokens", "0"], ["--top-k", "-1"], ["--max-new-tokens", "100000"]):
        proc = cli_run("generate", run, "--prompt", "The cat", *bad)
        assert proc.returncode == 2 and proc.stdout == "", (bad, proc.stdout, proc.stderr)
    ok = cli_run("generate", run, "--prompt", "The cat", "--max-new-tokens", "3", "--seed", "0")
    assert ok.returncode == 0 and ok.stdout.startswith("The cat"), ok.stderr

