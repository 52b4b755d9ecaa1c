"""Where a run's `Config` comes from: the named presets, config files, and `resolve`, which
layers them with the `--section.field=value` overrides.

Presets are plain functions returning a `Config`, listed by `superpose presets`. Each says what
it is for; the paper's shapes say which of their values the paper states and which we chose.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

from .config import CheckpointConfig, Config, DataConfig, OptimConfig, TrainConfig
from .core.tst_spec import TSTSpec
from .core.llama import LlamaConfig
from .core.model import foreign_field, stale_default, with_arch
from .core.qwen3_moe import Qwen3MoeConfig
from .errors import UserError
from .overrides import field_types, parse_overrides, set_fields


def _cpu_smoke() -> Config:
    """Seconds on 2 CPU cores: the end-to-end test of the whole pipeline, both phases."""
    return Config(
        model=LlamaConfig(dim=64, n_layers=2, n_heads=2, max_seq_len=64),
        data=DataConfig(seq_len=64, val_tokens=8192),
        tst=TSTSpec(bag_size=4, ratio=0.3),
        optim=OptimConfig(lr=3e-3, warmup_steps=5),
        train=TrainConfig(steps=40, batch_size=8, eval_every=20, log_every=10),
    )


def _cpu_small() -> Config:
    """A few minutes on 2 CPU cores: a 2M-parameter Llama on the default corpus (the crossover study of short runs)."""
    return Config(
        model=LlamaConfig(dim=128, n_layers=4, n_heads=4, max_seq_len=128),
        data=DataConfig(seq_len=128, val_tokens=65536),
        tst=TSTSpec(bag_size=4, ratio=0.3),
        optim=OptimConfig(lr=3e-3, warmup_steps=50),
        train=TrainConfig(steps=600, batch_size=16, eval_every=100),
    )


def _cpu_long() -> Config:
    """Tens of minutes on 2 CPU cores: the long, small regime (issue 21). cpu-smoke's body (~0.1M
    non-embedding parameters) for 6000 steps of 16 rows of 64 positions: ~58 training tokens per
    non-embedding parameter, where data per parameter is large enough for TST to pay off. Scored on
    64k validation tokens, so gains of a few hundredths of a nat are resolvable (benchmarks/records/
    long_small_*/ holds the screen that chose these values and the fresh-seed confirmation)."""
    return Config(
        model=LlamaConfig(dim=64, n_layers=2, n_heads=2, max_seq_len=64, init="torch"),
        data=DataConfig(seq_len=64, val_tokens=65536),
        tst=TSTSpec(bag_size=4, ratio=0.3),
        optim=OptimConfig(lr=3e-3, warmup_steps=100),
        train=TrainConfig(steps=6000, batch_size=16, eval_every=500, log_every=100),
    )


def _gpu_30m() -> Config:
    """One GPU, minutes: the crossover study's GPU rung between cpu-small and 270m
    (benchmarks/gpu_compare.sh). A 31M-parameter Llama (d=512, 8 layers; 27M non-embedding at the
    default corpus's 4096 tokens), rows of 256 positions, 32 rows a step (8k positions), bf16.
    Sized so that a 3-seed length scan fits in minutes on one H100/H200: see gpu_compare.sh."""
    return Config(
        model=LlamaConfig(dim=512, n_layers=8, n_heads=8, max_seq_len=256, init="torch"),
        data=DataConfig(seq_len=256, val_tokens=2**17),
        tst=TSTSpec(bag_size=4, ratio=0.3),
        optim=OptimConfig(lr=2e-3, warmup_steps=100),
        train=TrainConfig(steps=2000, batch_size=32, dtype="bfloat16", eval_every=250),
    )


def _paper(dim: int, n_layers: int, n_heads: int, n_kv_heads: int, ffn_dim: int, lr: float) -> Config:
    """The paper's dense recipe (Table 1): 20k steps of 2M tokens (1024 rows of 2048), WSD with a
    2000-step warmup and the last 10% decayed, AdamW (0.9, 0.95), TST with s=6, r=0.3, bf16.
    Bring your own data (`--data.path`); the paper used DCLM and the Llama-3 tokenizer."""
    return Config(
        model=LlamaConfig(dim=dim, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv_heads,
                          ffn_dim=ffn_dim, rope_theta=500000.0, max_seq_len=2048),
        data=DataConfig(seq_len=2048, val_tokens=2**20, vocab_size=32768),
        tst=TSTSpec(bag_size=6, ratio=0.3),
        optim=OptimConfig(lr=lr, warmup_steps=2000, decay_frac=0.1),
        train=TrainConfig(steps=20000, batch_size=1024, grad_accum=32, dtype="bfloat16", eval_every=1000),
        checkpoint=CheckpointConfig(every=1000, keep=2),
    )


def _cpu_moe() -> Config:
    """Seconds to minutes on 2 CPU cores: cpu-smoke's shape as a Qwen3-MoE-style model (QK-norm,
    both layers sparse, 8 experts, top-2) on the default corpus, both phases. Each expert is half
    the dense FFN width (96 of 192), so a token's two experts have the active FFN parameters of
    cpu-smoke's dense MLP: benchmarks/moe.py times the two against each other."""
    return Config(
        model=Qwen3MoeConfig(dim=64, n_layers=2, n_heads=2, max_seq_len=64, norm_eps=1e-6, n_experts=8, top_k=2,
                             moe_ffn_dim=96),
        data=DataConfig(seq_len=64, val_tokens=8192),
        tst=TSTSpec(bag_size=4, ratio=0.3),
        optim=OptimConfig(lr=3e-3, warmup_steps=5),
        train=TrainConfig(steps=40, batch_size=8, eval_every=20, log_every=10),
    )


def _paper_moe() -> Config:
    """The paper's headline row (§2-3): a Qwen3-MoE-family model of ~10B total / ~1B active
    parameters, TST with s=16, r=0.25 over 50k steps of 8M tokens (1024 rows of 8192), lr 3e-4,
    WSD with a 2000-step warmup and the last 10% decayed, AdamW (0.9, 0.95), bf16.

    The paper states only: Qwen3-MoE architecture, 10B/1B, s=16, 12,483 TST of 49,983 steps,
    8M tokens a step, lr 3e-4, 50/50 FineWeb-Edu + DCLM. Everything else is chosen here
    (docs/moe.md lists it): the Qwen3 tokenizer's vocabulary 151,936 (bring the
    data with `--data.path`); Qwen3-30B-A3B's proportions scaled down: d=1536, 28 layers, 12 query
    / 4 key-value heads of 128, 96 experts of width 768 with top-8 routing, every layer sparse,
    norm_topk_prob, aux coefficient 0.001; sequence length 8192 (the HF model name's 8k), RoPE
    theta 1e6 (Qwen3's). That gives 10.2B total and 0.97B active non-embedding parameters (1.44B
    active with the untied 152k-token embedding and head; `superpose presets`)."""
    return Config(
        model=Qwen3MoeConfig(dim=1536, n_layers=28, n_heads=12, n_kv_heads=4, rope_theta=1e6, norm_eps=1e-6,
                             max_seq_len=8192, n_experts=96, top_k=8, moe_ffn_dim=768, ffn_dim=4096,
                             vocab_size=151936),
        data=DataConfig(seq_len=8192, val_tokens=2**20),
        tst=TSTSpec(bag_size=16, ratio=0.25),
        optim=OptimConfig(lr=3e-4, warmup_steps=2000, decay_frac=0.1),
        train=TrainConfig(steps=50000, batch_size=1024, grad_accum=64, dtype="bfloat16", eval_every=1000),
        checkpoint=CheckpointConfig(every=1000, keep=2),
    )


PRESETS: dict[str, Callable[[], Config]] = {
    "cpu-smoke": _cpu_smoke,
    "cpu-small": _cpu_small,
    "cpu-long": _cpu_long,
    "gpu-30m": _gpu_30m,
    # SmolLM2-135M shape, untied (the paper's "270M"), lr from the paper's sweep.
    "270m": lambda: _paper(576, 30, 9, 3, 1536, 2e-3),
    # SmolLM2-360M shape, untied (the paper's "600M").
    "600m": lambda: _paper(960, 32, 15, 5, 2560, 1e-3),
    "cpu-moe": _cpu_moe,
    "10b-a1b": _paper_moe,
}


def preset(name: str) -> Config:
    """A named preset."""
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return PRESETS[name]()


def resolve(preset_name: str | None, overrides: list[str], config_file: Path | str | None = None) -> Config:
    """The run's config, in layers, each over the one before: the preset (or the defaults when
    there is none), then the config file, then the --section.field overrides; validated."""
    cfg = preset(preset_name) if preset_name else Config()
    if config_file is not None:
        apply_file(cfg, Path(config_file))
    return set_fields(cfg, parse_overrides(overrides)).validate()


CONFIG_SUFFIXES = (".toml", ".yaml", ".yml", ".json")


def read_config_file(path: Path) -> dict:
    """{section: {field: value}} from a TOML file (torchtitan's form: [section] tables), a YAML
    file (litgpt's), or JSON (a run's own RUN_DIR/config.json; a run directory stands for it)."""
    path = Path(path)
    if path.is_dir() and (path / "config.json").is_file():
        path = path / "config.json"
    if path.is_dir():
        raise UserError(f"config file {path} is a directory without config.json (not a run directory); pass a .toml, "
                        ".yaml or .json file, or the --out directory of a run")
    if not path.is_file():
        raise UserError(f"config file {path} does not exist; pass a .toml, .yaml or .json file, or a run directory")
    suffix = path.suffix.lower()
    if suffix not in CONFIG_SUFFIXES:
        raise UserError(f"config file {path}: use a {', '.join(CONFIG_SUFFIXES)} file")
    try:
        text = path.read_text()
        if suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError:
                raise UserError(f"{path} is YAML, which needs PyYAML: pip install pyyaml (or use TOML or JSON)") from None
            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
    except UserError:
        raise
    except Exception as e:  # tomllib, yaml and json each raise their own error type
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"cannot parse config file {path}: {first}") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise UserError(f"config file {path} must hold sections of fields ([model], [train], ... or model: ...), "
                        "not top-level values")
    return data


def apply_file(cfg: Config, path: Path) -> Config:
    """Set every field a config file names; all unknown keys are reported at once, in one line. Its
    model fields are those of the architecture it names (model.arch), else of cfg's; another
    architecture's field at its default, as an older run's config.json holds, is dropped."""
    data = read_config_file(path)
    sections = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    try:
        sections["model"] = with_arch(cfg.model, data.get("model", {}).get("arch", cfg.model.arch))
    except ValueError:
        pass  # an unknown architecture: set_fields names it
    unknown = []
    for section, fields in data.items():
        if section not in sections:
            unknown.append(section)
            continue
        obj = sections[section]
        for key, value in fields.items():
            if key in field_types(obj) or (section == "model" and stale_default(obj.arch, key, value)):
                continue
            unknown.append((section == "model" and foreign_field(obj.arch, key)) or f"{section}.{key}")
    if unknown:
        raise UserError(f"config file {path} has unknown keys: {', '.join(unknown)}; sections and fields are those of "
                        "superpose train --print-config")
    return set_fields(cfg, [(f"{section}.{key}", value) for section, fields in data.items()
                            for key, value in fields.items()], saved=True)
