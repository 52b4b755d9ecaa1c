"""superpose.titan: TST inside torchtitan's Trainer, on the CPU with gloo.

Checks: the config registry (every config builds; torchtitan's own ConfigManager loads it with
`--module superpose.titan` and parses `--tst.*`); the refusals (CP, TP, PP, a non-multi-hot loss,
loader workers that would split rows); phase-1 rows are s*L consecutive tokens of a stream built
without torchtitan (torchtitan's text loader; superpose's data directories with 0 and 2 workers);
on the same batch and weights the bagged embeddings and the step's loss equal superpose's core
functions; an end-to-end run through the switch on a superpose data directory (raw tokens
counted, the LR schedule and optimizer carried); DCP resume on either side of the switch gives
bit-identical losses; export by the run's recorded plan; the torchtitan version check.
Launched runs (no torchrun, HSDP, EP) are in tests/test_titan_parallel.py.

Skipped when torchtitan is not installed (bash scripts/setup.sh installs it).
    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q -n 0 tests/test_titan.py -x
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
from pathlib import Path

import pytest

pytest.importorskip("torchtitan", reason="torchtitan is not installed (pip install -e '.[titan]')")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from superpose.core.arch import ModelConfig  # noqa: E402
from superpose.core.llama import LlamaConfig  # noqa: E402
from superpose.core.qwen3_moe import Qwen3MoeConfig  # noqa: E402
from superpose.errors import UserError  # noqa: E402
from superpose.core.superposition import (bag_targets, count_valid_targets, multi_hot_cross_entropy,  # noqa: E402
                                          superpose_embeddings)
from superpose.titan.compat import use_cpu  # noqa: E402

use_cpu()

from superpose.titan import config_registry  # noqa: E402
from superpose.titan.arch import titan_model_spec  # noqa: E402
from superpose.titan.trainer import TSTTrainer  # noqa: E402
from torchtitan.hf_datasets.text_datasets import HuggingFaceTextDataLoader  # noqa: E402

VOCAB = 320  # conftest's tiny_data has a 320-token BPE; the jsonl assets' tokenizer has 256


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


def tiny_config(data: Path, out: Path, steps: int = 6, ratio: float = 0.5, bag: int = 4) -> TSTTrainer.Config:
    """The debug config on a 1-layer model, reading `data` (a superpose data directory, or a folder
    with tokenizer.json and data/*.jsonl for torchtitan's own text loader)."""
    cfg = config_registry.tst_llama3_debug()
    cfg.model_spec = titan_model_spec(LlamaConfig(dim=32, n_layers=1, n_heads=2, max_seq_len=64, vocab_size=VOCAB),
                                      "tiny")
    if (data / "meta.json").is_file():
        cfg.dataloader.path = str(data)
    else:
        cfg.hf_assets_path = str(data)
        cfg.dataloader = HuggingFaceTextDataLoader.Config(dataset="c4_test", dataset_path=str(data / "data"))
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
    trainer.logged = {}  # step -> the metrics torchtitan hands its TensorBoard/W&B loggers
    sink = trainer.metrics_processor.logger
    sink_log = sink.log
    sink.log = lambda metrics, step: (trainer.logged.__setitem__(step, dict(metrics)), sink_log(metrics, step))
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
    # benchmarks/titan_gpu.sh's command line: the 270M shape reading a superpose data directory
    cfg = ConfigManager().parse_args(["--module", "superpose.titan", "--config", "tst_llama3_270m_data",
                                      "--dataloader.path", "/data/x", "--dataloader.num_workers", "2",
                                      "--training.local_batch_size", "12"])
    assert (cfg.dataloader.path, cfg.model_spec.superpose_model.vocab_size, cfg.hf_assets_path) == ("/data/x", 128256, "")


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
    with pytest.raises(ValueError, match="tst.mode: .*; tst.weights=mi"):
        dataclasses.replace(cfg)


# ----------------------------------------------------------------------------- rows


def document_stream(assets: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, labels) of assets/data/train.jsonl as one token stream, built with `tokenizers`
    alone: each document BOS + tokens + EOS, inputs without its last id, labels without its first."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(assets / "tokenizer.json"))
    bos, eos = tok.token_to_id("<s>"), tok.token_to_id("</s>")
    xs, ys = [], []
    for line in (assets / "data" / "train.jsonl").read_text().splitlines():
        ids = [bos] + tok.encode(json.loads(line)["text"], add_special_tokens=False).ids + [eos]
        xs += ids[:-1]
        ys += ids[1:]
    return torch.tensor(xs), torch.tensor(ys)


def shard_stream(data: Path) -> torch.Tensor:
    """A superpose data directory's train tokens, read from the shard files with numpy alone."""
    import numpy as np

    meta = json.loads((data / "meta.json").read_text())
    dtype = np.uint16 if meta["token_bytes"] == 2 else np.uint32
    return torch.from_numpy(np.concatenate([np.fromfile(data / name, dtype=dtype, offset=32).astype(np.int64)
                                            for name in meta["splits"]["train"]["shards"]]))


def window_at(row: torch.Tensor, stream: torch.Tensor) -> int:
    """Where `row` occurs as a contiguous window of `stream` (-1: nowhere)."""
    hits = (stream.unfold(0, len(row), 1) == row).all(dim=1).nonzero()
    return int(hits[0]) if len(hits) else -1


@pytest.mark.parametrize("workers,b", [(0, 2), (2, 4)])
def test_phase1_rows_are_contiguous_text_with_and_without_workers(tiny_data, workers, b):
    """Every phase-1 row (inputs and labels) is s*L consecutive tokens of the data itself, however
    many loader workers (b a multiple of s with workers; the config refuses anything else)."""
    from superpose.titan.data import SuperposeDataLoader

    s, L = 4, 16
    loader = SuperposeDataLoader(SuperposeDataLoader.Config(path=str(tiny_data), num_workers=workers),
                                 dp_world_size=1, dp_rank=0, tokenizer=None, seq_len=L, local_batch_size=b)
    stream, it, fake = shard_stream(tiny_data), iter(loader), types.SimpleNamespace(_maskless=True)
    phase = config_registry.tst_llama3_debug().tst.phases(10)[0]
    assert phase.input_bag == s
    starts = []
    for _ in range(3):  # three micro-batches
        inputs, labels = TSTTrainer.tst_batch(fake, [next(it) for _ in range(s)], phase)
        for row, bag_labels in zip(inputs["input"], labels):
            at = window_at(row, stream)
            assert at >= 0, "a phase-1 row is not contiguous text"
            assert torch.equal(bag_labels, bag_targets(stream[at + 1:at + s * L + 1].view(1, -1), s)[0])
            starts.append(at)
    assert len(set(starts)) == len(starts)  # no row read twice


@pytest.mark.parametrize("schedule", ["", "4:0.25,2:0.25"])
def test_workers_that_would_split_rows_are_refused(schedule):
    cfg = config_registry.tst_llama3_debug()
    cfg.dataloader.num_workers, cfg.training.local_batch_size, cfg.tst.schedule = 2, 6, schedule
    with pytest.raises(UserError, match="num_workers 2 with training.local_batch_size 6, not a multiple of the "
                                        "bag size 4: ") as e:
        dataclasses.replace(cfg)
    assert "\n" not in str(e.value)
    cfg.training.local_batch_size = 8
    dataclasses.replace(cfg)  # a multiple of every bag size: allowed


# ----------------------------------------------------------------------------- equivalence


def test_phase1_rows_bags_and_loss_equal_superpose(assets, single_process, tmp_path):
    """Same batch, same weights: torchtitan's phase-1 step == superpose's core functions."""
    cfg = tiny_config(assets, tmp_path / "eq", steps=2, ratio=0.5)
    cfg.checkpoint.enable = False
    trainer = cfg.build()
    try:
        s, L, b = 4, 16, 2  # b is not a multiple of s: rows join loader batches
        # superpose's rows: s*L contiguous tokens of the documents' own stream, tokenized here
        # without torchtitan (each document BOS ... EOS, labels shifted within the document)
        stream_x, stream_y = document_stream(assets)
        loader = iter(trainer.dataloader)
        trainer.step = 1
        inputs, labels = trainer.tst_batch([next(loader) for _ in range(s)], trainer.phase())
        x, y = stream_x[:b * s * L].view(b, s * L), stream_y[:b * s * L].view(b, s * L)
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


def test_run_through_switch_and_resume_on_either_side(tiny_data, single_process, tmp_path):
    cfg = tiny_config(tiny_data, tmp_path / "run", steps=6, ratio=0.5)
    trainer, straight = run(cfg)
    assert sorted(straight) == [1, 2, 3, 4, 5, 6]
    assert [trainer.phase(k).bag_size for k in range(1, 7)] == [4, 4, 4, 1, 1, 1]
    # raw tokens: 3 steps of 2 rows x 4*16, then 3 steps of 2 rows x 16
    assert trainer.ntokens_seen == 3 * 2 * 64 + 3 * 2 * 16
    # the metrics carry the phase; tps counts positions, raw tokens/s is s times it in phase 1
    assert [(m["tst/phase"], m["tst/bag_size"]) for _, m in sorted(trainer.logged.items())] == [(1, 4)] * 3 + [(2, 1)] * 3
    for m in trainer.logged.values():
        assert m["throughput(raw_tps)"] == pytest.approx(m["tst/bag_size"] * m["throughput(tps)"], rel=0.02)
    # phase-1 loss sits above the log(s) floor, phase 2 is next-token CE (log V at init ~ 5.5)
    assert all(l > 0 for l in straight.values())
    ckpts = sorted(p.name for p in (tmp_path / "run" / "checkpoint").iterdir())
    assert "step-3" in ckpts and "step-4" in ckpts
    for load in (3, 4):  # the last phase-1 step, the first phase-2 step
        resumed_cfg = tiny_config(tiny_data, tmp_path / "run", steps=6, ratio=0.5)
        _, resumed = run(resumed_cfg, load_step=load)
        assert sorted(resumed) == list(range(load + 1, 7))
        for k, v in resumed.items():
            assert v == straight[k], f"resume from step {load}: step {k} loss {v} != {straight[k]}"
    check_export(tiny_data, tmp_path / "run" / "checkpoint", tmp_path / "hf", cfg.model_spec.superpose_model)


def check_export(data: Path, ckpt: Path, out: Path, model_cfg: ModelConfig) -> None:
    """Export reads the run's own plan (6 steps, switch after step 3; the debug config's defaults
    would put it after step 12), refuses phase-1 checkpoints in one line, and the final (phase-2)
    checkpoint as a HF folder gives transformers' logits == torchtitan's."""
    from transformers import AutoModelForCausalLM

    from superpose.titan.export import load_model_state, main

    plan = json.loads((ckpt / "superpose_tst.json").read_text())
    assert (plan["steps"], plan["switch_step"], plan["model"]["vocab_size"]) == (6, 3, VOCAB)
    with pytest.raises(SystemExit, match=r"^superpose.titan.export: .*step-3 is step 3, at or before the switch "
                                         r"\(step 3\): a phase-1 checkpoint predicts bags") as e:
        main([str(ckpt / "step-3"), str(out)])
    assert "\n" not in str(e.value)
    main([str(ckpt / "step-4"), str(out)])  # the old export (--config's default plan) refused this one
    assert (out / "tokenizer.json").read_bytes() == (data / "tokenizer.json").read_bytes()  # the run's tokenizer
    main([str(ckpt / "step-6"), str(out)])
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
    with pytest.raises(SystemExit, match=r"^superpose.titan.export: .*step-99 is not a torchtitan DCP checkpoint"):
        main([str(ckpt / "step-99"), str(out)])
    # a checkpoint folder without the run's plan: one line naming the way out
    (ckpt / "superpose_tst.json").unlink()
    with pytest.raises(SystemExit, match="superpose_tst.json is missing: .*--switch-step N --config NAME"):
        main([str(ckpt / "step-6"), str(out)])


def test_weighted_mce_alt_curriculum_runs(tiny_data, single_process, tmp_path):
    cfg = tiny_config(tiny_data, tmp_path / "w", steps=4, ratio=0.5)
    cfg.tst.weights, cfg.tst.loss, cfg.tst.schedule = "power", "mce_alt", "4:0.25,2:0.25"
    cfg = dataclasses.replace(cfg)  # re-run __post_init__
    cfg.checkpoint.enable = False
    trainer, losses = run(cfg)
    assert [trainer.phase(k).bag_size for k in range(1, 5)] == [4, 2, 1, 1]
    assert trainer.ntokens_seen == 2 * 64 + 2 * 32 + 2 * 2 * 16
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())


# ----------------------------------------------------------------------------- torchtitan versions


def test_other_torchtitan_versions_are_refused_in_one_line():
    from superpose.titan.compat import SUPPORTED_TORCHTITAN, TitanVersionError, check_version

    assert check_version() in SUPPORTED_TORCHTITAN
    with pytest.raises(TitanVersionError, match=r"^torchtitan 0\.4\.0 is installed; superpose\.titan supports "
                                                r"0\.3\.0: pip install torchtitan==0\.3\.0$"):
        check_version("0.4.0")


def test_a_torch_without_what_torchtitan_imports_is_refused_in_one_line():
    """torch 2.11 (an H200 image's) lacks torch.distributed.fsdp.DataParallelMeshDims: torchtitan 0.3.0
    then died in its imports under torchrun; superpose.titan says so in one line first."""
    import types

    import torch.distributed.fsdp as fsdp

    from superpose.titan.compat import TitanVersionError, check_torch

    check_torch()  # the torch installed here has it
    assert hasattr(fsdp, "DataParallelMeshDims")
    old = types.ModuleType("torch.distributed.fsdp")  # a torch 2.11 stand-in: no DataParallelMeshDims
    with pytest.raises(TitanVersionError, match=r"^torch \S+ is installed; torchtitan 0\.3\.0 needs torch >= 2\.13 "
                                                r"\(it imports torch\.distributed\.fsdp\.DataParallelMeshDims\): "
                                                r"pip install 'torch>=2\.13,<2\.15'$"):
        check_torch(old)


def test_private_torchtitan_names_only_in_compat():
    """torchtitan's underscore names (which change without notice) are used in compat.py alone."""
    import re

    root = Path(__file__).resolve().parents[1] / "superpose"
    # an import list: up to its closing parenthesis, or to the end of its line
    pattern = re.compile(r"from torchtitan[\w.]* import (?:\([^)]*?|[^(\n]*?)\b_[A-Za-z]|torchtitan[\w.]*\._[A-Za-z]")
    for path in root.rglob("*.py"):
        if path.name != "compat.py" or path.parent.name != "titan":
            text = path.read_text()
            assert not pattern.search(text), f"{path}: a private torchtitan name outside superpose/titan/compat.py"
            assert not re.search(r"\b(llama3|qwen3)\._[A-Za-z]", text), path


# ----------------------------------------------------------------------------- Qwen3-MoE export


def test_qwen3_moe_export_matches_transformers(tmp_path):
    """A Qwen3-MoE DCP checkpoint -> a Qwen3MoeForCausalLM folder with transformers' logits equal to
    torchtitan's; torchtitan's load-balancing expert bias (routing only, no HF equivalent) is refused
    in one line unless dropped, and dropped it exports the model that routes by scores alone."""
    import torch.distributed.checkpoint as dcp
    from transformers import AutoModelForCausalLM

    from superpose.titan.export import EXPERT_BIAS, export_hf

    cfg = Qwen3MoeConfig(dim=64, n_layers=2, n_heads=2, max_seq_len=64, vocab_size=VOCAB, norm_eps=1e-6,
                         n_experts=8, top_k=2, moe_ffn_dim=96)
    with torch.device("meta"):
        titan = titan_model_spec(cfg, "check").model.build()
    titan.to_empty(device="cpu")
    with torch.no_grad():
        titan.init_weights(buffer_device=None)
    tokens = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(0))

    def export_and_compare(step: int, **kw) -> tuple[torch.Tensor, torch.Tensor]:
        ckpt = tmp_path / f"step-{step}"
        dcp.save({**titan.state_dict(), "train_state": {"step": step, "ntokens_seen": 0}}, checkpoint_id=str(ckpt))
        out = export_hf(ckpt, cfg, tmp_path / f"hf{step}", switch_step=1, **kw)
        with torch.no_grad():
            want = titan(tokens)
            hf = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
            assert type(hf).__name__ == "Qwen3MoeForCausalLM"
            return want, hf(tokens).logits

    want, got = export_and_compare(2)
    print(f"qwen3-moe export: max |logits diff| = {float((got - want).abs().max()):.2e}")
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)

    biases = [b for name, b in titan.named_buffers() if name.endswith(EXPERT_BIAS)]
    assert biases
    with torch.no_grad():
        for b in biases:
            b.copy_(torch.linspace(-0.5, 0.5, len(b)))
    with pytest.raises(UserError, match=r"load-balancing expert bias \(max \|bias\| 0.5\).*--drop-expert-bias") as e:
        export_and_compare(3)
    assert "\n" not in str(e.value)
    with torch.no_grad():
        saved = [b.clone() for b in biases]
        for b in biases:
            b.zero_()
        want_no_bias = titan(tokens)  # what the exported model computes: routing by scores alone
        for b, v in zip(biases, saved):
            b.copy_(v)
    _, got = export_and_compare(4, drop_expert_bias=True)
    torch.testing.assert_close(got, want_no_bias, rtol=1e-3, atol=1e-3)
