"""torchtitan configs with Token Superposition Training: `--module superpose.titan --config NAME`.

    tst_llama3_debug     a 2-layer Llama, s=4, r=0.3, 40 steps: the plumbing, in seconds
    tst_qwen3_moe_debug  the same as a Qwen3 MoE (8 experts, top-2)
    tst_llama3_270m      the paper's 270M: SmolLM2-135M's shape untied (d=576, 30 layers, 9/3 heads,
                         FFN 1536), the Llama-3 tokenizer's 128,256 tokens, s=6, r=0.3, 20k steps
                         of 1024 rows x 2048, lr 2e-3, WSD (2000 warmup, last 10% decayed)
    tst_qwen3_10b_a1b    the paper's headline MoE (superpose preset 10b-a1b): 10.2B total / ~1B
                         active, s=16, r=0.25, 50k steps of 1024 rows x 8192, lr 3e-4

The shapes come from superpose's presets (superpose/presets.py) through `arch.titan_model_spec`,
so a preset and its torchtitan config cannot drift apart. Everything else is torchtitan's
Trainer.Config and can be overridden on its command line as usual (`--training.steps 100`,
`--parallelism.data_parallel_shard_degree 8`, `--tst.bag_size 4`, ...). The model shape itself is
fixed by the config name (torchtitan does not parse the model spec from the command line).

Data: the debug configs read a superpose data directory (`--dataloader.path DIR`, made by
`superpose prepare`; empty: superpose's default corpus, built on first use), with its own
tokenizer, so they run from a fresh clone (superpose/titan/data.py). The paper configs follow
torchtitan's conventions: `hf_assets_path` a folder with tokenizer.json
(scripts/download_hf_assets.py in a torchtitan checkout), the dataset a name in
torchtitan.hf_datasets (c4). `tst_llama3_270m_data` is the 270M config reading a superpose data
directory instead (pre-tokenized, so phase 1's s-times-more text costs the loader nothing).
"""

from __future__ import annotations

from torchtitan.components.checkpoint import CheckpointManager
from torchtitan.components.loss import ChunkedLossWrapper
from torchtitan.components.metrics import MetricsProcessor
from torchtitan.components.optimizer import LRSchedulersContainer, default_adamw
from torchtitan.components.validate import Validator
from torchtitan.config import ParallelismConfig, TrainingConfig
from torchtitan.distributed.activation_checkpoint import SelectiveAC
from torchtitan.hf_datasets.text_datasets import HuggingFaceTextDataLoader

from ..core.arch import ModelConfig
from ..core.llama import LlamaConfig
from ..core.qwen3_moe import Qwen3MoeConfig
from ..presets import PRESETS
from .arch import titan_model_spec
from .data import SuperposeDataLoader
from .loss import MultiHotLoss
from ..core.tst_spec import TSTSpec
from .trainer import TSTTrainer


SUPERPOSE_DATA = "superpose"  # `dataset` of tst_config: a superpose data directory (--dataloader.path)
DEBUG_VOCAB = 4096  # the debug configs read superpose's default corpus, whose default tokenizer has 4096 tokens


def tst_config(model: ModelConfig, flavor: str, *, tst: TSTSpec, seq_len: int, local_batch_size: int,
               global_batch_size: int, steps: int, lr: float, warmup_steps: int, decay_ratio: float,
               hf_assets_path: str, dataset: str, attention: str = "sdpa", dtype: str = "float32",
               checkpoint_interval: int = 1000) -> TSTTrainer.Config:
    """A TSTTrainer.Config for a superpose-shaped model: AdamW (0.9, 0.95, wd 0.1), warmup-stable-
    decay, gradient clipping at 1, the multi-hot loss through torchtitan's chunked LM head."""
    return TSTTrainer.Config(
        model_spec=titan_model_spec(model, flavor, attention),
        tst=tst,
        loss=ChunkedLossWrapper.Config(loss_fn=MultiHotLoss.Config()),
        hf_assets_path=hf_assets_path,
        optimizer=default_adamw(lr=lr),
        lr_scheduler=LRSchedulersContainer.Config(warmup_steps=warmup_steps, decay_ratio=decay_ratio,
                                                  decay_type="linear", min_lr_factor=0.0),
        training=TrainingConfig(local_batch_size=local_batch_size, global_batch_size=global_batch_size,
                                seq_len=seq_len, steps=steps, dtype=dtype, disable_cuda_graphs=True),
        dataloader=(SuperposeDataLoader.Config() if dataset == SUPERPOSE_DATA
                    else HuggingFaceTextDataLoader.Config(dataset=dataset)),
        metrics=MetricsProcessor.Config(log_freq=10),
        parallelism=ParallelismConfig(),
        checkpoint=CheckpointManager.Config(interval=checkpoint_interval, last_save_model_only=False),
        activation_checkpoint=SelectiveAC.Config(),
        validator=Validator.Config(enable=False),
    )


def tst_llama3_debug() -> TSTTrainer.Config:
    model = LlamaConfig(dim=64, n_layers=2, n_heads=2, max_seq_len=64, vocab_size=DEBUG_VOCAB)
    return tst_config(model, "tst_debug", tst=TSTSpec(bag_size=4, ratio=0.3), seq_len=64, local_batch_size=8,
                      global_batch_size=-1, steps=40, lr=3e-3, warmup_steps=5, decay_ratio=0.2,
                      hf_assets_path="", dataset=SUPERPOSE_DATA, checkpoint_interval=10)


def tst_qwen3_moe_debug() -> TSTTrainer.Config:
    model = Qwen3MoeConfig(dim=64, n_layers=2, n_heads=2, max_seq_len=64, vocab_size=DEBUG_VOCAB, norm_eps=1e-6,
                           n_experts=8, top_k=2, moe_ffn_dim=96)
    return tst_config(model, "tst_moe_debug", tst=TSTSpec(bag_size=4, ratio=0.3), seq_len=64,
                      local_batch_size=8, global_batch_size=-1, steps=40, lr=3e-3, warmup_steps=5, decay_ratio=0.2,
                      hf_assets_path="", dataset=SUPERPOSE_DATA, checkpoint_interval=10)


def tst_llama3_270m() -> TSTTrainer.Config:
    cfg = PRESETS["270m"]()
    cfg.model.vocab_size = 128256  # the Llama-3 tokenizer, as in the paper: 254M parameters untied
    return tst_config(cfg.model, "tst_270m", tst=cfg.tst,
                      seq_len=cfg.data.seq_len, local_batch_size=16, global_batch_size=cfg.train.batch_size,
                      steps=cfg.train.steps, lr=cfg.optim.lr, warmup_steps=cfg.optim.warmup_steps,
                      decay_ratio=cfg.optim.decay_frac, hf_assets_path="./assets/hf/Llama-3.1-8B", dataset="c4",
                      dtype="float32")


def tst_llama3_270m_data() -> TSTTrainer.Config:
    """tst_llama3_270m reading a superpose data directory (--dataloader.path, a vocabulary <= 128,256)."""
    cfg = tst_llama3_270m()
    cfg.dataloader, cfg.hf_assets_path = SuperposeDataLoader.Config(), ""
    return cfg


def tst_qwen3_10b_a1b() -> TSTTrainer.Config:
    cfg = PRESETS["10b-a1b"]()
    return tst_config(cfg.model, "tst_10b_a1b", tst=cfg.tst,
                      seq_len=cfg.data.seq_len, local_batch_size=2, global_batch_size=cfg.train.batch_size,
                      steps=cfg.train.steps, lr=cfg.optim.lr, warmup_steps=cfg.optim.warmup_steps,
                      decay_ratio=cfg.optim.decay_frac, hf_assets_path="./assets/hf/Qwen3-30B-A3B", dataset="c4")
