"""superpose.titan: TST inside torchtitan's Trainer, on the CPU with gloo.

Checks: the config registry (every config builds; torchtitan's own ConfigManager loads it with
`--module superpose.titan` and parses `--tst.*`); the refusals (CP, TP, PP, a non-multi-hot loss);
phase-1 rows regrouped from loader batches equal superpose's rows of s*L tokens; on the same batch
and weights the bagged embeddings and the step's loss equal superpose's core functions; an
end-to-end run through the switch (raw tokens counted, the LR schedule and optimizer carried);
DCP resume on either side of the switch gives bit-identical losses; FSDP with 2 processes (torchrun).

Skipped when torchtitan is not installed (`pip install -e ".[titan]"`).
    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_titan.py -x
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torchtitan", reason="torchtitan is not installed (pip install -e '.[titan]')")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from superpose.core.model import ModelConfig  # noqa: E402
from superpose.core.superposition import (bag_targets, count_valid_targets, multi_hot_cross_entropy,  # noqa: E402
                                          superpose_embeddings)
from superpose.titan.compat import use_cpu  # noqa: E402

use_cpu()

from superpose.titan import config_registry  # noqa: E402
from superpose.titan.arch import titan_model_spec  # noqa: E402
from superpose.titan.trainer import TSTTrainer  # noqa: E402

VOCAB = 256


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> Path:
    """A tiny BPE tokenizer (tokenizer.json + tokenizer_config.json) and a jsonl corpus."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    d = tmp_path_factory.mktemp("titan_assets")
    (d / "data").mkdir()
    words = "the quick brown fox jumps over a lazy dog while seven cats sleep under warm red blankets".split()
    texts = [" ".join(words[(i * 7 + j * 3) % len(words)] for j in range(20 + i % 13)) for i in range(400)]
    (d / "data" / "train.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<unk>", "<s>", "</s>"]))
    tok.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))
    return d


@pytest.fixture
def single_process(monkeypatch, tmp_path):
    for k, v in dict(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                     MASTER_PORT=str(29500 + os.getpid() % 500), HF_DATASETS_OFFLINE="1",
                     HF_DATASETS_CACHE=str(tmp_path / "hf")).items():
        monkeypatch.setenv(k, v)
    yield
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def tiny_config(assets: Path, out: Path, steps: int = 6, ratio: float = 0.5, bag: int = 4) -> TSTTrainer.Config:
    cfg = config_registry.tst_llama3_debug()
    cfg.model_spec = titan_model_spec(ModelConfig(dim=32, n_layers=1, n_heads=2, max_seq_len=64, vocab_size=VOCAB),
                                      "tiny")
    cfg.hf_assets_path = str(assets)
    cfg.dataloader.dataset_path = str(assets / "data")
    cfg.training.seq_len, cfg.training.local_batch_size, cfg.training.steps = 16, 2, steps
    cfg.tst.ratio, cfg.tst.bag_size = ratio, bag
    cfg.lr_scheduler.warmup_steps = 2
    cfg.metrics.log_freq = 1
    cfg.checkpoint.interval = 1
    cfg.checkpoint.enable = True
    cfg.dump_folder = str(out)
    cfg.debug.deterministic = True
    cfg.debug.seed = 0
    cfg.training.mixed_precision_param = "float32"  # FSDP computes in bf16 by default; exact comparisons in fp32
    return cfg


def run(cfg: TSTTrainer.Config, load_step: int = -1) -> tuple[TSTTrainer, dict[int, float]]:
    """Train to the end; returns the trainer (closed) and the loss of each step."""
    cfg.checkpoint.load_step = load_step
    trainer = cfg.build()
    losses: dict[int, float] = {}
    inner = trainer.forward_backward_step

    def record(**kw):
        loss = inner(**kw)
        losses[trainer.step] = float(loss.detach())
        return loss

    trainer.forward_backward_step = record
    try:
        trainer.train()
    finally:
        trainer.close()
        torch.distributed.destroy_process_group()
    return trainer, losses


def full(t: torch.Tensor) -> torch.Tensor:
    """A plain tensor (torchtitan's parameters and activations may be DTensors even on 1 rank)."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


# ----------------------------------------------------------------------------- configs


def test_registry_configs_build_and_parse():
    from torchtitan.config import ConfigManager

    sizes = {}
    for name in ("tst_llama3_debug", "tst_qwen3_moe_debug", "tst_llama3_270m", "tst_qwen3_10b_a1b"):
        cfg = getattr(config_registry, name)()
        with torch.device("meta"):
            sizes[name] = sum(p.numel() for p in cfg.model_spec.model.build().parameters())
        assert isinstance(cfg, TSTTrainer.Config)
    assert 250e6 < sizes["tst_llama3_270m"] < 260e6  # 254M: 106M trunk + 2 x 128256 x 576 untied
    assert 10.1e9 < sizes["tst_qwen3_10b_a1b"] < 10.3e9
    cfg = ConfigManager().parse_args(["--module", "superpose.titan", "--config", "tst_llama3_debug",
                                      "--tst.bag_size", "3", "--tst.weights", "power", "--training.steps", "7"])
    assert (cfg.tst.bag_size, cfg.tst.weights, cfg.training.steps) == (3, "power", 7)
    assert cfg.loss.loss_fn.weights == "power"  # the loss reads the tst section


@pytest.mark.parametrize("field,value,needle", [
    ("context_parallel_degree", 2, "context parallelism is refused"),
    ("tensor_parallel_degree", 2, "tensor parallelism is refused"),
    ("pipeline_parallel_degree", 2, "pipeline parallelism is refused"),
])
def test_refused_parallelisms(field, value, needle):
    cfg = config_registry.tst_llama3_debug()
    setattr(cfg.parallelism, field, value)
    with pytest.raises(ValueError, match=needle):
        dataclasses.replace(cfg)


def test_refused_loss_and_fields():
    from torchtitan.components.loss import CrossEntropyLoss

    cfg = config_registry.tst_llama3_debug()
    with pytest.raises(ValueError, match="MultiHotLoss"):
        dataclasses.replace(cfg, loss=CrossEntropyLoss.Config())
    cfg.tst.weights, cfg.tst.mode = "mi", "sideways"
    with pytest.raises(ValueError, match="tst.weights.*; tst.mode"):
        dataclasses.replace(cfg)


# ----------------------------------------------------------------------------- equivalence


def test_phase1_rows_bags_and_loss_equal_superpose(assets, single_process, tmp_path):
    """Same batch, same weights: torchtitan's phase-1 step == superpose's core functions."""
    cfg = tiny_config(assets, tmp_path / "eq", steps=2, ratio=0.5)
    cfg.checkpoint.enable = False
    trainer = cfg.build()
    try:
        s, L, b = 4, 16, 2
        # the loader's first s batches of (b, L), as one stream, give superpose's rows (b, s*L + 1)
        loader = iter(trainer.dataloader)
        raw = [next(loader) for _ in range(s)]
        stream_x = torch.cat([d["input"] for d, _ in raw]).flatten()  # (s*b*L,)
        stream_y = torch.cat([y for _, y in raw]).flatten()
        trainer.step = 1
        inputs, labels = trainer.tst_batch(raw, trainer.phase())
        x, y = stream_x.view(b, s * L), stream_y.view(b, s * L)  # rows of s*L contiguous tokens
        assert torch.equal(inputs["input"], x)
        assert torch.equal(labels, bag_targets(y, s))  # (b, L, s)

        model = trainer.model_parts[0]
        # One phase-1 forward through the root module (FSDP-wrapped); the first layer's input is
        # the bagged embedding the hook made.
        seen = []
        pre = model.layers["0"].register_forward_pre_hook(lambda mod, args: seen.append(full(args[0]).detach()))
        tokens, _, extra = trainer.post_dataloading_process(dict(inputs), labels)
        trainer._input_bag = s
        with torch.no_grad(), trainer.train_context():
            hidden = full(model(tokens, **extra))  # (b, L, D): the LM head runs inside the loss
        trainer._input_bag = 1
        pre.remove()
        # bagged embeddings: the hook == superpose_embeddings (float32 accumulation)
        expected = superpose_embeddings(F.embedding(x, full(model.tok_embeddings.weight)), s)
        assert seen[0].shape == (b, L, 32)
        torch.testing.assert_close(seen[0], expected, rtol=0, atol=0)
        # bf16 activations (FSDP's default mixed precision): the hook still averages in float32
        e16 = F.embedding(x, full(model.tok_embeddings.weight)).bfloat16()
        trainer._input_bag = s
        torch.testing.assert_close(trainer._bag_hook(model.tok_embeddings, (x,), e16), superpose_embeddings(e16, s),
                                   rtol=0, atol=0)
        trainer._input_bag = 1

        # the step's loss: the trainer's (chunked through ChunkedLossWrapper, normalised by the
        # trainer's count) vs superpose's multi-hot CE / count_valid_targets on the same hidden states
        logits = hidden @ full(model.lm_head.weight).T  # (b, L, V)
        targets = bag_targets(y, s)
        want = multi_hot_cross_entropy(logits, targets, reduction="sum") / count_valid_targets(targets)
        got = full(trainer.forward_backward_step(input_dict=dict(inputs), labels=labels,
                                                 global_valid_tokens=(labels != -100).sum()))
        print(f"equivalence: bagged max|diff| = 0, loss titan {float(got):.8f} superpose {float(want):.8f} "
              f"diff {abs(float(got) - float(want)):.2e}")
        torch.testing.assert_close(got.float(), want.float(), rtol=1e-6, atol=1e-6)
    finally:
        trainer.close()


# ----------------------------------------------------------------------------- end to end


def test_run_through_switch_and_resume_on_either_side(assets, single_process, tmp_path):
    cfg = tiny_config(assets, tmp_path / "run", steps=6, ratio=0.5)
    trainer, straight = run(cfg)
    assert sorted(straight) == [1, 2, 3, 4, 5, 6]
    assert [trainer.phase(k).bag_size for k in range(1, 7)] == [4, 4, 4, 1, 1, 1]
    # raw tokens: 3 steps of 2 rows x 4*16, then 3 steps of 2 rows x 16
    assert trainer.ntokens_seen == 3 * 2 * 64 + 3 * 2 * 16
    # phase-1 loss sits above the log(s) floor, phase 2 is next-token CE (log V at init ~ 5.5)
    assert all(l > 0 for l in straight.values())
    ckpts = sorted(p.name for p in (tmp_path / "run" / "checkpoint").iterdir())
    assert "step-3" in ckpts and "step-4" in ckpts
    for load in (3, 4):  # the last phase-1 step, the first phase-2 step
        resumed_cfg = tiny_config(assets, tmp_path / "run", steps=6, ratio=0.5)
        _, resumed = run(resumed_cfg, load_step=load)
        assert sorted(resumed) == list(range(load + 1, 7))
        for k, v in resumed.items():
            assert v == straight[k], f"resume from step {load}: step {k} loss {v} != {straight[k]}"
    check_export(assets, tmp_path / "run" / "checkpoint", tmp_path / "hf", cfg.model_spec.superpose_model)


def check_export(assets: Path, ckpt: Path, out: Path, model_cfg: ModelConfig) -> None:
    """The final (phase-2) checkpoint as a HF folder: transformers' logits == torchtitan's."""
    from transformers import AutoModelForCausalLM

    from superpose.titan.export import export_hf, load_model_state

    with pytest.raises(ValueError, match="phase-1 checkpoint predicts bags"):
        export_hf(ckpt / "step-3", model_cfg, out, switch_step=3)
    export_hf(ckpt / "step-6", model_cfg, out, switch_step=3, tokenizer_dir=assets)
    state, step = load_model_state(ckpt / "step-6", model_cfg)
    assert step == 6
    spec = titan_model_spec(model_cfg, "check")
    with torch.device("meta"):
        titan = spec.model.build()
    titan.to_empty(device="cpu")
    with torch.no_grad():
        titan.init_weights(buffer_device=None)  # the RoPE cache is a buffer, not in the checkpoint
    titan.load_state_dict(state)
    tokens = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = titan(tokens)  # (2, 16, V): causal SDPA, RoPE positions 0..15
        hf = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
        got = hf(tokens).logits
    print(f"export: max |logits diff| torchtitan vs transformers = {float((got - want).abs().max()):.2e}")
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_weighted_mce_alt_curriculum_runs(assets, single_process, tmp_path):
    cfg = tiny_config(assets, tmp_path / "w", steps=4, ratio=0.5)
    cfg.tst.weights, cfg.tst.loss, cfg.tst.schedule = "power", "mce_alt", "4:0.25,2:0.25"
    cfg = dataclasses.replace(cfg)  # re-run __post_init__
    cfg.checkpoint.enable = False
    trainer, losses = run(cfg)
    assert [trainer.phase(k).bag_size for k in range(1, 5)] == [4, 2, 1, 1]
    assert trainer.ntokens_seen == 2 * 64 + 2 * 32 + 2 * 2 * 16
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())


def test_fsdp_two_processes_through_the_switch(assets, tmp_path):
    """FSDP2 over 2 CPU processes (gloo), launched like a user would, through the CLI entry point."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_DATASETS_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "hf")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
           str(29000 + os.getpid() % 500), "-m", "superpose.titan.train", "--module", "superpose.titan",
           "--config", "tst_llama3_debug", "--hf_assets_path", str(assets), "--dataloader.dataset_path",
           str(assets / "data"), "--training.steps", "4", "--training.seq_len", "16", "--training.local_batch_size",
           "2", "--tst.ratio", "0.5", "--metrics.log_freq", "1", "--checkpoint.no-enable",
           "--parallelism.data_parallel_shard_degree", "2",
           # stable torch's FSDP2 path (the default spmd_types backend needs torch nightly's FSDP)
           "--parallelism.spmd_backend", "partial_dtensor", "--dump_folder", str(tmp_path / "fsdp")]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)  # ~30 s idle; minutes on busy cores
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-3000:]
    assert "switches from superposition (s=4) to next-token (s=1)" in log, log[-3000:]
    assert "Training completed" in log
