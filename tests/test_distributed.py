"""Data parallelism under torchrun (CPU, gloo, 2 processes): DDP and FSDP2 train the same model as
one process, gradient accumulation is exact, FSDP checkpoints resume at world size 1, and an
error on one rank ends the whole job with that rank's message.

The runs cross the phase switch (8 steps, r = 0.5, global batch 4). The 2-process runs go
through the real user path, `python -m torch.distributed.run --standalone --nproc_per_node 2 -m
superpose train ...`, all three launched at once (each is a few seconds of process start);
the 1 x 1 and 1 x 2 runs are in-process.

Run: .venv/bin/pytest tests/test_distributed.py
"""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from superpose.training import distributed
from superpose.presets import resolve
from superpose.data import TrainLoader, open_dataset
from superpose.errors import UserError
from superpose.training.resume import resume_config
from superpose.training import build_trainer, run_training

import faults
from conftest import tiny_config

ROOT = Path(__file__).resolve().parent.parent
REL = 1e-5  # the bar for per-step losses


def config(data, **overrides):
    return tiny_config(data, train__threads=1, checkpoint__every=3, checkpoint__keep=0, **overrides)


def as_flags(cfg) -> list[str]:
    """Every field of a config as a --section.field=value override (on top of any preset)."""
    return [f"--{section}.{name}={value}" for section, fields in cfg.to_dict().items()
            for name, value in fields.items()]


def torchrun(run_dir: Path, cfg, *flags: str, env: dict | None = None) -> subprocess.Popen:
    """Start `torchrun --nproc_per_node 2 -m superpose train` in its own process group (with the
    faults of `env` armed: tests/faults.py)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(faults.SCRIPT), "train", "--preset", "cpu-smoke", "--out", str(run_dir), *as_flags(cfg), *flags]
    return subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def finish(proc: subprocess.Popen, timeout: float = 180) -> tuple[int, str]:
    """Wait for a torchrun job; whatever happens, leave none of its processes behind."""
    try:
        out, _ = proc.communicate(timeout=timeout)
        return proc.returncode, out
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the job's own group (start_new_session): stray workers
        except ProcessLookupError:
            pass
        proc.wait()


def records(run_dir: Path, kind: str = "train") -> list[dict]:
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["type"] == kind]


def max_rel(a: list[float], b: list[float]) -> float:
    assert len(a) == len(b)
    return max(abs(x - y) / abs(x) for x, y in zip(a, b))


@pytest.fixture(scope="module")
def runs(tiny_data, tmp_path_factory):
    """The same config as 2 x 1 (DDP and FSDP, torchrun), 1 x 2 (accumulation) and 1 x 1."""
    root = tmp_path_factory.mktemp("dist")
    cfg = config(tiny_data)
    jobs = {"ddp": torchrun(root / "ddp", cfg, "--parallel.mode=ddp"),
            "fsdp": torchrun(root / "fsdp", cfg, "--parallel.mode=fsdp"),
            "fail": torchrun(root / "fail", cfg, "--parallel.mode=fsdp", env={"SUPERPOSE_TEST_FAIL_RANK": "1:2"})}
    try:
        for name, c in (("single", cfg), ("accum", config(tiny_data, train__grad_accum=2))):
            build_trainer(c, root / name, open_dataset(tiny_data), log=lambda m: None).train(progress=False)
    finally:
        done = {name: finish(proc) for name, proc in jobs.items()}
    for name in ("ddp", "fsdp"):
        assert done[name][0] == 0, done[name][1][-3000:]
    return {"root": root, "cfg": cfg, "out": {name: out for name, (_, out) in done.items()},
            "rc": {name: rc for name, (rc, _) in done.items()}}


@pytest.mark.parametrize("name", ["ddp", "fsdp", "accum"])
def test_data_parallel_and_accumulation_train_the_single_process_model(runs, name):
    root = runs["root"]
    want, got = records(root / "single"), records(root / name)
    # Rank 0 alone wrote the metrics: each step exactly once.
    assert [r["step"] for r in got] == list(range(8))
    assert [r["phase"] for r in got] == [1] * 4 + [2] * 4
    assert max_rel([r["loss"] for r in want], [r["loss"] for r in got]) < REL
    # The same global gradient norm: gradients are summed over ranks, not averaged.
    assert max_rel([r["grad_norm"] for r in want], [r["grad_norm"] for r in got]) < 1e-4
    # The same sequences in the same order: the loader walked the same global stream.
    assert [r["epoch"] for r in got] == [r["epoch"] for r in want]
    assert [r["tokens_seen"] for r in got] == [r["tokens_seen"] for r in want]
    assert max_rel([e["val_loss"] for e in records(root / "single", "eval")],
                   [e["val_loss"] for e in records(root / name, "eval")]) < REL
    # The final model is the plain single-process model.
    w, v = load_file(str(root / "single" / "model.safetensors")), load_file(str(root / name / "model.safetensors"))
    assert set(w) == set(v)
    for key in w:
        torch.testing.assert_close(v[key], w[key], rtol=1e-4, atol=1e-5, msg=key)
    if name != "accum":  # only rank 0 spoke: each log line once
        out = runs["out"][name]
        assert out.count("phase 1 (superposition)") == 1 and out.count("done: val_loss") == 1
        assert f"parallel: {name} over 2 processes" in out
        assert json.loads((root / name / "summary.json").read_text())["parallel"] == {"mode": name, "world_size": 2}


def test_fsdp_checkpoint_has_the_single_process_format(runs):
    root = runs["root"]
    for step in (3, 6):
        mine, ref = (root / run / "checkpoints" / f"step-{step:06d}" for run in ("fsdp", "single"))
        assert sorted(p.name for p in mine.iterdir()) == sorted(p.name for p in ref.iterdir())
        meta, ref_meta = json.loads((mine / "meta.json").read_text()), json.loads((ref / "meta.json").read_text())
        assert meta["loader"] == ref_meta["loader"] and meta["tokens_seen"] == ref_meta["tokens_seen"]
        assert meta["parallel"] == {"mode": "fsdp", "world_size": 2}
        w, v = load_file(str(ref / "model.safetensors")), load_file(str(mine / "model.safetensors"))
        assert set(w) == set(v)
        for key in w:
            torch.testing.assert_close(v[key], w[key], rtol=1e-4, atol=1e-5)
        a = torch.load(ref / "optimizer.pt", weights_only=True)
        b = torch.load(mine / "optimizer.pt", weights_only=True)
        assert a["param_groups"] == b["param_groups"]
        assert a["state"].keys() == b["state"].keys()
        for i, st in a["state"].items():
            assert st.keys() == b["state"][i].keys()
            assert torch.equal(st["step"], b["state"][i]["step"])
            torch.testing.assert_close(b["state"][i]["exp_avg"], st["exp_avg"], rtol=1e-4, atol=1e-7)


def test_resume_at_world_size_1_from_a_2_process_fsdp_checkpoint(runs, tmp_path):
    """Keep the FSDP run's phase-1 checkpoint (step 3) only and resume it in one process: the
    rest of the run, across the phase switch, is the single-process run's."""
    run = tmp_path / "resumed"
    shutil.copytree(runs["root"] / "fsdp", run)
    for name in ("summary.json", "model.safetensors"):
        (run / name).unlink()
    shutil.rmtree(run / "checkpoints" / "step-000006")
    logs = []
    run_training(resume_config(run), run, log=logs.append, resume=True)  # parallel.mode=fsdp, no torchrun
    assert any("not started by torchrun: training in this one process" in m for m in logs)
    assert any("resuming" in m and "step 3 of 8" in m for m in logs)
    ref = runs["root"] / "single"
    got = records(run)
    assert [r["step"] for r in got] == list(range(8))
    assert max_rel([r["loss"] for r in records(ref)], [r["loss"] for r in got]) < REL
    w, v = load_file(str(ref / "model.safetensors")), load_file(str(run / "model.safetensors"))
    for key in w:
        torch.testing.assert_close(v[key], w[key], rtol=1e-4, atol=1e-5, msg=key)


def test_an_error_on_one_rank_ends_the_job_with_its_message(runs):
    out, rc = runs["out"]["fail"], runs["rc"]["fail"]
    assert rc != 0
    lines = [line for line in out.splitlines() if line.startswith("superpose: error:")]
    assert "superpose: error: [rank 1] test failure injected on rank 1 at step 2 (SUPERPOSE_TEST_FAIL_RANK)" in lines
    # Rank 0, waiting for rank 1 in a collective, ends in one line too (or is ended by torchrun
    # before it can print), never with a traceback.
    assert all(line.startswith("superpose: error: [rank 0] lost contact with another rank") for line in lines
               if line.startswith("superpose: error: [rank 0]"))
    assert "[rank0]: Traceback" not in out
    recs = records(runs["root"] / "fail")
    assert [r["step"] for r in recs] == [0, 1]  # steps before the failure, written by rank 0 once each


# ----------------------------------------------------------------------------- mixture of experts

MOE = dict(model__arch="qwen3_moe", model__n_experts=4, model__top_k=2, model__moe_ffn_dim=24, model__n_layers=3,
           model__mlp_only_layers=[0])


@pytest.fixture(scope="module")
def moe_runs(tiny_data, tmp_path_factory):
    """The MoE model as 2 x 1 (DDP and FSDP, torchrun) and as 1 x 2 (one process, 2 micro-batches).
    The load-balancing loss is a statistic of each micro-batch (as transformers computes it per
    forward), so the single-process reference has the same micro-batches: grad_accum=2."""
    root = tmp_path_factory.mktemp("dist-moe")
    cfg = config(tiny_data, **MOE)
    jobs = {name: torchrun(root / name, cfg, f"--parallel.mode={name}") for name in ("ddp", "fsdp")}
    try:
        build_trainer(config(tiny_data, train__grad_accum=2, **MOE), root / "accum", open_dataset(tiny_data),
                      log=lambda m: None).train(progress=False)
    finally:
        done = {name: finish(proc) for name, proc in jobs.items()}
    for name, (rc, out) in done.items():
        assert rc == 0, out[-3000:]
    return root


@pytest.mark.parametrize("name", ["ddp", "fsdp"])
def test_data_parallel_moe_trains_the_single_process_model(moe_runs, name):
    want, got = records(moe_runs / "accum"), records(moe_runs / name)
    assert [r["step"] for r in got] == list(range(8)) and [r["phase"] for r in got] == [1] * 4 + [2] * 4
    for key in ("loss", "aux_loss", "grad_norm"):
        assert max_rel([r[key] for r in want], [r[key] for r in got]) < 1e-6, key
    # The expert load is counted over the global batch: the ranks' counts are summed.
    assert [r["expert_load_max"] for r in got] == pytest.approx([r["expert_load_max"] for r in want], abs=1e-9)
    w, v = load_file(str(moe_runs / "accum" / "model.safetensors")), load_file(str(moe_runs / name / "model.safetensors"))
    assert set(w) == set(v) and any("experts.gate_up_proj" in k for k in w)
    for key in w:
        torch.testing.assert_close(v[key], w[key], rtol=1e-5, atol=1e-6, msg=key)


# ----------------------------------------------------------------------------- in-process pieces

def test_ranks_read_disjoint_shares_of_one_global_batch(tiny_data):
    ds = open_dataset(tiny_data)

    def loader():
        return TrainLoader(ds.train, ds.train_docs, seed=3, vocab_size=ds.vocab_size)

    whole, halves = loader(), [loader(), loader()]
    for row_tokens in (64, 16, 64):  # phase-1 rows (s*L), phase-2 rows, and back
        batch = whole.next_rows(4, row_tokens)
        shares = [halves[r].next_rows(4, row_tokens, keep=slice(2 * r, 2 * r + 2)) for r in range(2)]
        assert np.array_equal(batch, np.concatenate(shares))
        assert all(h.state_dict() == whole.state_dict() for h in halves)


def test_setup_outside_torchrun_is_one_process_and_torchrun_needs_a_mode(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    par = distributed.setup("fsdp", torch.device("cpu"), mixed_precision="bf16")
    assert (par.mode, par.world_size, par.is_main, par.owns_group) == ("none", 1, True, False)
    assert any("not started by torchrun" in n for n in par.notes)
    assert distributed.rank_tag() == ""
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert distributed.rank_tag() == "[rank 1] "
    with pytest.raises(UserError, match="torchrun started 2 processes but parallel.mode=none"):
        distributed.setup("none", torch.device("cpu"))


def test_global_batch_must_split_into_ranks_and_micro_batches(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setattr(distributed, "setup", lambda *a, **k: distributed.Parallel(mode="ddp", world_size=3))
    with pytest.raises(UserError, match=r"train.batch_size=4 \(the global batch\) must be divisible by the 3 "
                                        r"processes x train.grad_accum=2.*multiple of 6"):
        build_trainer(tiny_config(tiny_data, train__grad_accum=2), tmp_path / "r", open_dataset(tiny_data))


@pytest.mark.parametrize("args,needle", [
    (["--parallel.mode=zero3"], "parallel.mode: must be one of none, ddp, fsdp"),
    (["--parallel.mixed_precision=fp8"], "parallel.mixed_precision: must be one of none, bf16"),
    (["--parallel.timeout_s=0"], "parallel.timeout_s: must be >= 1"),
])
def test_bad_parallel_values_are_named(args, needle):
    with pytest.raises(UserError, match=needle.replace(".", r"\.")):
        resolve("cpu-smoke", args)
