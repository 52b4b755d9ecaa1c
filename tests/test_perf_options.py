"""The speed options compute what the default path computes: attention kernels, fused AdamW,
torch.compile, the allocator setting, the fused chunked loss and its auto rule; and the benchmark
scripts run (tiny shapes, no timings: speed targets live in benchmarks/ and its records).

Run: .venv/bin/pytest tests/test_perf_options.py
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from superpose.config import Config
from superpose.presets import resolve
from superpose.data import open_dataset
from superpose.errors import UserError
from superpose.training.perf import AUTO_FUSE_MIN_LOGITS, attention_kernel, auto_loss_chunk_rows, keep_freed_memory
from superpose.core.superposition import chunked_multi_hot_cross_entropy, multi_hot_cross_entropy, next_bag_targets
from superpose.training import build_trainer
from superpose.core.tst_step import model_loss

from conftest import tiny_config

ROOT = Path(__file__).resolve().parent.parent
CPU = torch.device("cpu")


def run(cfg, run_dir):
    t = build_trainer(cfg, run_dir, open_dataset(cfg.data.path), log=lambda m: None)
    t.train(progress=False)
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return t, [r for r in lines if r["type"] == "train"]


def assert_same_run(a, b, rel):
    for x, y in zip(a, b):
        assert x["phase"] == y["phase"]
        assert x["loss"] == pytest.approx(y["loss"], rel=rel), x["step"]
        assert x["grad_norm"] == pytest.approx(y["grad_norm"], rel=rel * 10), x["step"]


@pytest.fixture(scope="module")
def default_run(tiny_data, tmp_path_factory):
    return run(tiny_config(tiny_data), tmp_path_factory.mktemp("default") / "run")


# ----------------------------------------------------------------------------- config

def test_options_parse_validate_and_default_to_todays_path():
    cfg = resolve("cpu-smoke", ["--train.compile=true", "--optim.fused", "yes", "--train.attention=math"])
    assert cfg.train.compile is True and cfg.optim.fused is True and cfg.train.attention == "math"
    d = Config().train
    assert (d.compile, d.attention, d.loss_chunk_rows, d.keep_freed_memory) == (False, "auto", -1, True)
    assert Config().optim.fused is False
    bad = Config()
    bad.train.attention, bad.train.loss_chunk_rows = "fast", -2
    problems = " ".join(bad.problems())
    assert "train.attention" in problems and "train.loss_chunk_rows" in problems


def test_cuda_only_attention_kernels_are_refused_on_cpu(tiny_data, tmp_path):
    with pytest.raises(UserError, match="only on CUDA"):
        attention_kernel("efficient", CPU)
    cfg = tiny_config(tiny_data, train__attention="cudnn")
    with pytest.raises(UserError, match="train.attention=cudnn"):
        build_trainer(cfg, tmp_path / "r", open_dataset(tiny_data), log=lambda m: None)


# ----------------------------------------------------------------------------- options = same training

@pytest.mark.parametrize("kernel", ["math", "flash"])
def test_attention_kernels_train_like_auto(tiny_data, tmp_path, default_run, kernel):
    _, rec = run(tiny_config(tiny_data, train__attention=kernel), tmp_path / kernel)
    assert_same_run(rec, default_run[1], rel=1e-5)


def test_attention_kernel_is_really_pinned():
    q = torch.randn(1, 2, 8, 16)
    with attention_kernel("math", CPU):
        # sdpa_kernel switches the global backend flags (named cuda, read by the CPU dispatch too)
        assert torch.backends.cuda.math_sdp_enabled() and not torch.backends.cuda.flash_sdp_enabled()
        y_math = torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True)
    assert torch.backends.cuda.flash_sdp_enabled()  # restored on exit
    y_auto = torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True)
    torch.testing.assert_close(y_math, y_auto, rtol=1e-5, atol=1e-6)


def test_fused_adamw_trains_like_foreach(tiny_data, tmp_path, default_run):
    t, rec = run(tiny_config(tiny_data, optim__fused=True), tmp_path / "fused")
    assert all(g.get("fused") for g in t.optimizer.param_groups)
    assert not default_run[0].optimizer.param_groups[0].get("fused")
    assert_same_run(rec, default_run[1], rel=1e-5)


def test_compiled_model_and_loss_train_like_eager(tiny_data, tmp_path, default_run):
    if shutil.which(os.environ.get("CXX", "g++")) is None and shutil.which("c++") is None:
        pytest.skip("torch.compile on CPU needs a C++ compiler")
    torch._dynamo.reset()
    t, rec = run(tiny_config(tiny_data, train__compile=True), tmp_path / "compiled")
    assert t.loss_fn is not model_loss  # the compiled wrapper
    assert {r["phase"] for r in rec} == {1, 2}  # a graph per phase, both right
    assert_same_run(rec, default_run[1], rel=1e-4)
    # The compiled run saves plain parameter names (no _orig_mod.): its model loads anywhere.
    assert all("_orig_mod" not in k for k in t.model.state_dict())


def test_keep_freed_memory_changes_no_bits(tiny_data, tmp_path, default_run):
    if sys.platform.startswith("linux"):
        assert keep_freed_memory() is True and keep_freed_memory() is True  # applied, idempotent
    t, rec = run(tiny_config(tiny_data, train__keep_freed_memory=False), tmp_path / "nokeep")
    assert [r["loss"] for r in rec] == [r["loss"] for r in default_run[1]]
    for name, p in t.model.state_dict().items():
        assert torch.equal(p, default_run[0].model.state_dict()[name]), name


# ----------------------------------------------------------------------------- the loss

def test_auto_chunk_rule():
    assert auto_loss_chunk_rows(64, 320, 32, CPU) == 0  # tiny: unfused, bit for bit F.cross_entropy
    assert auto_loss_chunk_rows(2048, 4096, 128, CPU) == 256  # cpu-small: fused, 2 * D rows per chunk
    assert auto_loss_chunk_rows(AUTO_FUSE_MIN_LOGITS // 4096, 4096, 32, CPU) == 128
    assert auto_loss_chunk_rows(65536, 32768, 576, torch.device("cuda")) == 0  # not measured on GPUs yet


def test_trainer_applies_the_auto_rule(tiny_data, tmp_path, default_run):
    assert default_run[0].loss_chunk_rows == 0  # the tiny config stays on the plain path
    cfg = tiny_config(tiny_data, train__batch_size=64, train__grad_accum=2, model__vocab_size=2048)
    t = build_trainer(cfg, tmp_path / "r", open_dataset(tiny_data), log=lambda m: None)
    assert t.loss_chunk_rows == 128  # 32 rows x 16 positions x 2048 = 2^20 logits per micro-batch
    cfg.train.loss_chunk_rows = 0
    assert build_trainer(cfg, tmp_path / "r2", open_dataset(tiny_data), log=lambda m: None).loss_chunk_rows == 0


def test_mce_gradient_is_made_once_and_handed_on():
    torch.manual_seed(0)
    z = torch.randn(2, 5, 11, requires_grad=True)
    targets = next_bag_targets(torch.randint(0, 11, (2, 20)), 4)
    loss = multi_hot_cross_entropy(z, targets)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward called twice"):
        loss.backward()
    with torch.no_grad():  # no gradient buffer is made without autograd
        assert torch.equal(multi_hot_cross_entropy(z, targets), loss.detach())


def test_mce_rows_in_pieces_equal_whole(monkeypatch):
    """Logits wider than the row budget are done in row chunks (as bf16 logits of a large vocab are)."""
    import superpose.core.loss_kernels as sp

    torch.manual_seed(1)
    z = torch.randn(3, 7, 13)
    targets = next_bag_targets(torch.randint(0, 13, (3, 21)), 3)
    outs = []
    for budget in (1 << 22, 13 * 2):  # all rows at once, then two rows per piece
        monkeypatch.setattr(sp, "_ROW_ELEMENTS", budget)
        x = z.clone().requires_grad_()
        loss = multi_hot_cross_entropy(x, targets, "power")
        loss.backward()
        outs.append((loss, x.grad))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(outs[0][1], outs[1][1], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("s", [1, 4])
def test_chunked_head_under_bf16_autocast_matches_dense(s):
    torch.manual_seed(2)
    B, L, D, V = 2, 16, 32, 97
    h = torch.randn(B, L, D, requires_grad=True)
    w = (0.1 * torch.randn(V, D)).requires_grad_()
    targets = next_bag_targets(torch.randint(0, V, (B, L * s)), s)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        dense = multi_hot_cross_entropy(torch.nn.functional.linear(h, w), targets, reduction="sum")
        chunked = chunked_multi_hot_cross_entropy(h, w, targets, chunk_rows=5)
    torch.testing.assert_close(chunked, dense, rtol=1e-2, atol=1e-2)
    g1 = torch.autograd.grad(dense, (h, w))
    g2 = torch.autograd.grad(chunked, (h, w))
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=5e-2, atol=5e-2)


# ----------------------------------------------------------------------------- the benchmark scripts

def bench(script, *args, env_extra=None, check=True):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], capture_output=True, text=True,
                         env=env, timeout=600)
    if check:
        assert out.returncode == 0, out.stderr[-3000:]
    return out


def test_loss_benchmark_runs_and_checks_equality():
    out = bench("loss.py", "--part", "logits", "--rows", "64", "--vocab", "256", "--repeats", "1", "--threads", "1")
    assert "reference" in out.stdout and "superpose" in out.stdout and "max |diff|" in out.stdout
    assert "peak +" in out.stdout  # the per-variant memory subprocesses ran
    out = bench("loss.py", "--part", "head", "--rows", "64", "--vocab", "256", "--dim", "16", "--chunks", "16",
                "--repeats", "1", "--threads", "1", "--no-memory")
    assert "chunk-16" in out.stdout and out.stdout.count("s = ") == 2


def test_phase_and_gpu_benchmarks_run_on_a_tiny_shape(tmp_path):
    env = {"SUPERPOSE_CACHE": str(tmp_path)}
    tiny = ["model.dim=32", "model.n_layers=1", "model.n_heads=2", "train.batch_size=2", "data.seq_len=16",
            "data.val_tokens=64", "train.threads=1"]
    out = bench("phases.py", "--repeats", "1", "--warmup", "1", "--set", *tiny, env_extra=env)
    assert "phase 1 / phase 2 step time" in out.stdout and "data time / step" in out.stdout
    out = bench("throughput.py", "--rounds", "1", "--steps", "1", "--warmup", "1", "--set", *tiny, env_extra=env)
    assert "superpose / hf tokens/s" in out.stdout and "MFU" in out.stdout
    out = bench("gpu.py", "--device", "cpu", "--tiny", "--steps", "1", "--warmup", "1", "--no-compile",
                "--micro-batch", "2", "--grad-accum", "2", "--set", "train.threads=1", env_extra=env)
    assert "phase 1:" in out.stdout and "raw tokens/s" in out.stdout and "MFU" in out.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_gpu_benchmark_says_clearly_that_it_needs_a_gpu():
    out = bench("gpu.py", check=False)
    assert out.returncode == 2 and "no CUDA GPU" in out.stderr
    if shutil.which("nvidia-smi") is None:
        sh = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh")], capture_output=True, text=True, timeout=60)
        assert sh.returncode == 2 and "no NVIDIA GPU" in sh.stderr


@pytest.mark.parametrize("s", [1, 3])
def test_fused_bag_lookup_is_the_bag_mean_of_the_lookup(s):
    from superpose.core.superposition import superpose_embeddings, superpose_token_embeddings

    torch.manual_seed(3)
    w = torch.randn(50, 8, requires_grad=True)
    ids = torch.randint(0, 50, (2, 6 * s))
    g = torch.randn(2, 6, 8)
    a = superpose_embeddings(torch.nn.functional.embedding(ids, w), s)
    b = superpose_token_embeddings(ids, w, s)
    assert torch.equal(a, b)
    (ga,) = torch.autograd.grad(a, w, g)
    (gb,) = torch.autograd.grad(b, w, g)
    torch.testing.assert_close(ga, gb, rtol=1e-6, atol=1e-7)
