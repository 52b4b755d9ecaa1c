"""Typed run configuration: nested dataclasses, validation, `--section.field value` overrides.

A run is fully described by one `Config` (written resolved to RUN_DIR/config.json, read back with
`Config.from_dict`: a field an older run's file lacks takes its default here). Its `model` is the
config class of its architecture, which model.arch chooses (overrides.py). Validation reports
every invalid field at once, so a user sees every problem in one message. Where a config comes
from (presets, config files, `resolve`) is presets.py.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from .core.arch import ModelConfig
from .core.llama import LlamaConfig
from .core.schedule import DECAY_SHAPES, Schedule
from .core.tst_spec import TSTSpec
from .data.corpus import prepare_command
from .data.mixture import parse_mix
from .data.shards import recorded_vocab_size
from .checks import seed_problem
from .errors import UserError
from .overrides import RESUMABLE, parse_overrides, set_fields

INT_MAX = 2**63 - 1  # the largest integer torch and numpy hold (int64)


def failed(*checks: tuple[bool, str]) -> list[str]:
    """The messages of the (ok, message) checks that failed: a section's `problems`."""
    return [msg for ok, msg in checks if not ok]


@dataclass
class DataConfig:
    path: str = ""
    """A prepared data directory (`superpose prepare`), or raw text (a file, a folder, several
    joined by commas: prepared once into $SUPERPOSE_CACHE, keyed by its bytes); empty means the
    default corpus, prepared on first use into $SUPERPOSE_CACHE (default ~/.cache/superpose)."""
    mix: str = ""
    """A weighted mixture of prepared data directories instead of data.path: "DIR_A=0.5,DIR_B=0.5"
    (weights > 0, normalised to sum 1; at least 2 directories, all with one tokenizer). Each row
    of training comes from one directory, drawn by weight; validation takes each directory's
    share of data.val_tokens from its held-out split (superpose/data/mixture.py)."""
    vocab_size: int = 4096
    """Only for the default corpus (path empty): the size of the BPE tokenizer it is prepared with
    on first use. A prepared data directory brings its own tokenizer and ignores this; the
    model's vocabulary is model.vocab_size."""
    seq_len: int = 128
    """L: positions per training row. Phase-1 rows read s*L raw tokens into the same L positions."""
    val_tokens: int = 65536
    """Validation tokens scored at each evaluation (the first ones of the held-out split)."""

    def problems(self) -> list[str]:
        out = failed((self.seq_len >= 1, f"data.seq_len: must be >= 1, got {self.seq_len}"),
                     (self.val_tokens >= self.seq_len,
                      f"data.val_tokens: must be >= data.seq_len ({self.seq_len}), got {self.val_tokens}"),
                     (self.vocab_size >= 257,
                      f"data.vocab_size: must be >= 257 (256 bytes + end-of-text), got {self.vocab_size}"))
        if self.mix:
            try:
                parse_mix(self.mix)
            except ValueError as e:
                out.append(f"data.mix: {e}; write it as DIR=WEIGHT,DIR=WEIGHT,... e.g. data/a=0.5,data/b=0.5")
            out += failed((not self.path, "data.path: a run reads one data directory (data.path) or a mixture "
                           "(data.mix), not both; drop --data.path (data.mix names every directory) or --data.mix"))
        return out


@dataclass
class OptimConfig:
    lr: float = 3e-3
    """Peak learning rate of AdamW."""
    warmup_steps: int = 50
    """Linear warmup steps."""
    decay_frac: float = 0.2
    """Fraction of total steps, at the end, over which the LR decays (WSD)."""
    decay_shape: str = "linear"
    """linear, cosine or sqrt."""
    min_lr_ratio: float = 0.0
    """Final LR as a fraction of the peak."""
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    """Decoupled weight decay on matrices (not on norms; on embeddings only with decay_embeddings)."""
    decay_embeddings: bool = False
    """Apply weight decay to the input embedding too (the LM head is a matrix and always is)."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value; 0 disables clipping."""
    fused: bool = False
    """AdamW's fused kernel (`torch.optim.AdamW(fused=True)`, CPU and CUDA): one kernel for all
    parameters instead of a few per tensor group. The same update up to float rounding."""

    def problems(self) -> list[str]:
        return optim_problems(self) + failed(
            (self.warmup_steps >= 0, f"optim.warmup_steps: must be >= 0, got {self.warmup_steps}"),
            (0.0 <= self.decay_frac <= 1.0, f"optim.decay_frac: must be in [0, 1], got {self.decay_frac}"),
            (self.decay_shape in DECAY_SHAPES,
             f"optim.decay_shape: must be one of {', '.join(DECAY_SHAPES)}, got {self.decay_shape!r}"),
            (0.0 <= self.min_lr_ratio <= 1.0, f"optim.min_lr_ratio: must be in [0, 1], got {self.min_lr_ratio}"),
            (0.0 <= self.beta1 < 1.0 and 0.0 <= self.beta2 < 1.0,
             f"optim.beta1/beta2: must be in [0, 1), got {self.beta1}, {self.beta2}"),
            (self.grad_clip >= 0, f"optim.grad_clip: must be >= 0 (0 disables), got {self.grad_clip}"))


@dataclass
class TrainConfig:
    steps: int = 600
    """Total optimizer steps T over both phases."""
    batch_size: int = 16
    """Rows per optimizer step (global batch)."""
    grad_accum: int = 1
    """Micro-batches per step; batch_size must be divisible by it."""
    seed: int = 0
    """Seeds the initial weights and the data order."""
    device: str = "auto"
    """auto (cuda if available, else cpu), cpu, cuda or cuda:N."""
    dtype: str = "float32"
    """float32 or bfloat16 (autocast for matmuls; master weights stay float32)."""
    eval_every: int = 100
    """Evaluate on the validation split every N steps (and at the end); 0 only at the end."""
    log_every: int = 10
    """Print a log line every N steps when no progress bar is shown."""
    threads: int = 0
    """torch CPU threads; 0 keeps torch's default."""
    loss_chunk_rows: int = -1
    """0: the LM head makes all logits, then the loss. N > 0: head and loss fused, N positions at a
    time, so the (positions x vocabulary) logits never exist at once (less memory at large V).
    -1 (auto): fused, 2 * model.dim positions at a time, on CPU when a micro-batch has at least 2^20
    logits (where it measured faster); unfused otherwise and on GPUs (see perf.auto_loss_chunk_rows)."""
    compile: bool = False
    """torch.compile the model and the loss together (one graph per phase). The first step of
    each phase compiles (tens of seconds; needs a C++ compiler on CPU); later steps are faster."""
    attention: str = "auto"
    """Kernel of F.scaled_dot_product_attention: auto (torch chooses), math, flash, efficient or
    cudnn (torch.nn.attention.SDPBackend). CPU has math and flash only."""
    keep_freed_memory: bool = True
    """CPU runs on Linux: let malloc keep freed blocks of up to 64 MiB for reuse instead of
    returning them to the kernel, so each step does not page-fault its buffers in again
    (superpose/training/perf.py; up to 1.25x faster steps measured). Up to 1 GiB of freed memory stays
    resident. The same arithmetic either way."""
    on_nan: str = "stop"
    """What a NaN or Inf in the loss or the gradients does: stop (the default: diagnostics, then
    the run ends before the update, leaving the last checkpoint untouched) or skip (the batch is
    dropped without an update, the step still counts, and metrics count `skipped_steps`)."""

    def problems(self) -> list[str]:
        seed = seed_problem(self.seed, "train.seed")
        B, accum = self.batch_size, self.grad_accum
        return failed(
            (self.steps >= 1, f"train.steps: must be >= 1, got {self.steps}"),
            (B >= 1, f"train.batch_size: must be >= 1, got {B}"),
            (accum >= 1, f"train.grad_accum: must be >= 1, got {accum}"),
            (seed is None, f"train.seed: {seed and seed.removeprefix('train.seed ')}"),
            (B < 1 or accum < 1 or B % accum == 0, f"train.grad_accum: must divide train.batch_size={B}, got {accum}"),
            (self.device in ("auto", "cpu") or self.device.startswith("cuda"),
             f"train.device: must be auto, cpu, cuda or cuda:N, got {self.device!r}"),
            (self.dtype in ("float32", "bfloat16"), f"train.dtype: must be float32 or bfloat16, got {self.dtype!r}"),
            (self.eval_every >= 0, f"train.eval_every: must be >= 0, got {self.eval_every}"),
            (self.log_every >= 1, f"train.log_every: must be >= 1, got {self.log_every}"),
            (self.threads >= 0, f"train.threads: must be >= 0, got {self.threads}"),
            (self.loss_chunk_rows >= -1,
             f"train.loss_chunk_rows: must be >= -1 (-1 = auto, 0 = unfused), got {self.loss_chunk_rows}"),
            (self.attention in ATTENTION_KERNELS,
             f"train.attention: must be one of {', '.join(ATTENTION_KERNELS)}, got {self.attention!r}"),
            (self.on_nan in ON_NAN, f"train.on_nan: must be one of {', '.join(ON_NAN)}, got {self.on_nan!r}"))


ON_NAN = ("stop", "skip")
PARALLEL_MODES = ("none", "ddp", "fsdp")
MIXED_PRECISION = ("none", "bf16")
ATTENTION_KERNELS = ("auto", "math", "flash", "efficient", "cudnn")


@dataclass
class CheckpointConfig:
    every: int = 0
    """Save a checkpoint into RUN_DIR/checkpoints/step-NNNNNN/ every N optimizer steps; 0 saves
    only when the run is stopped by SIGINT/SIGTERM. The final model is written either way."""
    every_minutes: float = 30.0
    """Also save a checkpoint when this many minutes of wall time have passed since the last one
    (or the start), so a run never loses more than that to a crash, whatever `every` is; 0
    disables. Checkpoints do not change the arithmetic: a resumed run stays bit for bit."""
    keep: int = 2
    """Keep the newest K checkpoints, deleting older ones once a new one is complete (or before a
    save, down to K - 1 but never the newest, when the disk has too little room for it); 0 keeps all."""

    def problems(self) -> list[str]:
        return failed(
            (self.every >= 0, f"checkpoint.every: must be >= 0 (0 = only on SIGINT/SIGTERM), got {self.every}"),
            (self.keep >= 0, f"checkpoint.keep: must be >= 0 (0 = keep all), got {self.keep}"),
            (not self.every_minutes < 0, f"checkpoint.every_minutes: must be >= 0 (0 = off), got {self.every_minutes}"))


@dataclass
class ParallelConfig:
    mode: str = "none"
    """Data parallelism when launched by torchrun (`torchrun --nproc_per_node N -m superpose train`):
    none (one process), ddp (DistributedDataParallel: every rank holds the whole model, gradients
    and optimizer state) or fsdp (FSDP2 `fully_shard` per block: parameters, gradients and
    optimizer state sharded over the ranks). train.batch_size stays the global batch."""
    mixed_precision: str = "none"
    """fsdp only: none, or bf16 (FSDP's MixedPrecisionPolicy: bf16 weights for compute, gradients
    reduced in float32, float32 master weights and optimizer state)."""
    timeout_s: int = 1800
    """Seconds a rank waits for the others in a collective before the job fails (a hung rank)."""

    def problems(self) -> list[str]:
        return failed(
            (self.mode in PARALLEL_MODES,
             f"parallel.mode: must be one of {', '.join(PARALLEL_MODES)}, got {self.mode!r}"),
            (self.mixed_precision in MIXED_PRECISION,
             f"parallel.mixed_precision: must be one of {', '.join(MIXED_PRECISION)}, got {self.mixed_precision!r}"),
            (self.timeout_s >= 1, f"parallel.timeout_s: must be >= 1, got {self.timeout_s}"))


@dataclass
class LogConfig:
    """Where a run's numbers go besides RUN_DIR/metrics.jsonl, which is always written and is the
    source of truth (`superpose plot` and `compare` read it). Trackers get the same fields, plus
    each phase switch as an event; they never change the training arithmetic, so a resume may
    turn them on or off."""
    tensorboard: bool = False
    """Also write TensorBoard event files into RUN_DIR/tensorboard (`tensorboard --logdir runs`).
    Needs the tensorboard package: pip install 'superpose[track]'."""
    wandb: str = ""
    """Also log to Weights & Biases, into this project ("" = off). WANDB_MODE=offline logs into
    RUN_DIR/wandb without a network (`wandb sync` uploads it later); WANDB_ENTITY, WANDB_API_KEY
    and the other WANDB_* variables apply as usual. A resumed run continues the same W&B run.
    Needs the wandb package: pip install 'superpose[track]'."""
    wandb_name: str = ""
    """The W&B run's display name ("" = the run directory's last two path parts)."""


@dataclass
class Config:
    model: ModelConfig = field(default_factory=LlamaConfig)
    """The architecture's config: a LlamaConfig, a Qwen3MoeConfig, ... as model.arch says."""
    data: DataConfig = field(default_factory=DataConfig)
    tst: TSTSpec = field(default_factory=TSTSpec)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def build_schedule(self) -> Schedule:
        """The run's phases and learning rate as functions of the step (core/schedule.py). Not
        `tst.schedule`, which is the text of a bag-size curriculum, one input to the phases."""
        o = self.optim
        return Schedule(tuple(self.tst.phases(self.train.steps)), peak_lr=o.lr, warmup_steps=o.warmup_steps,
                        decay_frac=o.decay_frac, min_lr_ratio=o.min_lr_ratio, decay_shape=o.decay_shape)

    @classmethod
    def from_dict(cls, d: dict) -> Config:
        """The config `to_dict` gave (a run's config.json, a checkpoint's meta). A config.json from
        before each architecture had its own config class holds every architecture's model fields:
        another architecture's at its default is dropped, set to anything else refused in one line."""
        return set_fields(cls(), [(f"{section}.{key}", value) for section, values in d.items()
                                  for key, value in values.items()], saved=True)

    def problems(self) -> list[str]:
        """Every invalid field, as 'section.field: what is allowed, what was given'."""
        # inf and nan compare false with every bound (lr > 0 holds for inf) and would reach the
        # weights before the NaN guard can act, so every float field must be finite first.
        out = [f"{section.name}.{f.name}: must be a finite number, got {value}"
               for section in dataclasses.fields(self) for f in dataclasses.fields(getattr(self, section.name))
               if isinstance(value := getattr(getattr(self, section.name), f.name), float) and not math.isfinite(value)]
        # Likewise every count is stored and computed on as a 64-bit integer (torch, numpy, the
        # checkpoint's meta); a larger one (--train.steps=1e23 as digits) is never a real request.
        out += [f"{section.name}.{f.name}: must be at most {INT_MAX:,}, got {value}"
                for section in dataclasses.fields(self) for f in dataclasses.fields(getattr(self, section.name))
                if isinstance(value := getattr(getattr(self, section.name), f.name), int) and abs(value) > INT_MAX]
        out += self.model.problems() + self.data.problems()
        if self.data.mix and self.tst.weights == "mi":
            out.append("tst.weights=mi weighs the bags by one data directory's mutual information, and data.mix mixes "
                       "several; use another tst.weights, or data.path")
        for section in (self.tst, self.optim, self.train, self.checkpoint, self.parallel):
            out += section.problems()
        return out

    def validate(self) -> Config:
        self.model.resolve()
        problems = self.problems()
        if problems:
            raise UserError("invalid config: " + "; ".join(problems))
        return self


# AdamW keeps its moments and its eps in float32: an eps below this rounds to 0 (or to a subnormal
# that sqrt(v) + eps no longer sees), and a weight whose gradient is 0 then takes 0 / 0 = NaN.
MIN_EPS = 1e-30
# A peak learning rate above this moves each weight by more than its own scale in one step: the
# run diverges (or, near float32's range, the update itself overflows), whatever else is set.
MAX_LR = 1.0


def optim_problems(o: OptimConfig) -> list[str]:
    """The optimizer's fields that would train nothing or NaN, named before any step is taken (so
    the NaN guard's advice about the learning rate is never the wrong advice)."""
    out = []
    if not 0 < o.lr <= MAX_LR:
        out.append(f"optim.lr: must be in (0, {MAX_LR:g}] (AdamW moves each weight by about lr a step), got {o.lr}")
    if not MIN_EPS <= o.eps <= 1:
        out.append(f"optim.eps: must be in [{MIN_EPS:g}, 1] (float32 rounds a smaller one to 0, and a weight with a "
                   f"zero gradient then updates by 0/0 = NaN), got {o.eps}")
    if o.weight_decay < 0:
        out.append(f"optim.weight_decay: must be >= 0, got {o.weight_decay}")
    elif 0 < o.lr <= MAX_LR and o.lr * o.weight_decay >= 1:
        # Decoupled decay multiplies each decayed weight by 1 - lr * weight_decay every step.
        out.append(f"optim.weight_decay: times optim.lr must be < 1 (AdamW multiplies the weights by 1 - lr x "
                   f"weight_decay each step; at >= 1 they vanish or flip sign), got {o.weight_decay} x {o.lr}")
    return out


def nan_advice(o: OptimConfig) -> str:
    """What to change after a NaN or Inf: the learning rate and its warmup, unless an optimizer
    value far outside its usual range is the likelier cause, which is then named first."""
    unusual = [fix for fix, odd in (("raise --optim.eps (usually 1e-8)", o.eps < 1e-12),
                                    ("lower --optim.weight_decay (lr x weight_decay is usually <= 1e-3)",
                                     o.lr * o.weight_decay > 1e-2),
                                    ("set --optim.grad_clip=1 (0 turns clipping off)", o.grad_clip == 0)) if odd]
    return "; ".join([*unusual, "lower --optim.lr or raise --optim.warmup_steps"])


def ignored_settings(cfg: Config, overrides: list[str]) -> list[str]:
    """Warnings for overrides the run will not use (torchtitan's rule: say when a setting is
    silently ignored). data.vocab_size sizes only the default corpus's tokenizer: beside
    data.path or data.mix, whose data brings its own, a value other than that tokenizer's size
    is ignored."""
    given = dict(parse_overrides(overrides))
    out = [f"warning: --{key} is ignored: tst.schedule={cfg.tst.schedule!r} sets the bag sizes and their share of "
           "the steps; drop it" for key in ("tst.bag_size", "tst.ratio") if key in given and cfg.tst.schedule]
    own = cfg.data.path or (parse_mix(cfg.data.mix)[0][0] if cfg.data.mix else "")  # a mixture: its tokenizer's
    if "data.vocab_size" not in given or not own:
        return out
    theirs = recorded_vocab_size(Path(own))  # None when unreadable: reported when the directory is opened
    if theirs == cfg.data.vocab_size:
        return out
    return out + [f"warning: --data.vocab_size={cfg.data.vocab_size} is ignored: it sizes only the default corpus's "
            f"tokenizer, and the data in {own} brings its own ({theirs} tokens); drop it, pad the model "
            "with --model.vocab_size, or prepare the data with "
            + prepare_command("YOUR_TEXT", "DATA_DIR", "--vocab-size", "N")]


def _resume_keys() -> tuple[str, ...]:
    """`overrides.RESUMABLE` ("section.a/b", "section.*") as the `section.field` keys it names."""
    every = {f.name: [g.name for g in dataclasses.fields(f.default_factory)] for f in dataclasses.fields(Config)}
    keys = []
    for entry in RESUMABLE:
        section, names = entry.split(".")
        keys += [f"{section}.{name}" for name in (every[section] if names == "*" else names.split("/"))]
    assert all(k.split(".")[1] in every[k.split(".")[0]] for k in keys), "RESUMABLE names a field Config lacks"
    return tuple(keys)


RESUME_MAY_CHANGE = _resume_keys()
"""The fields a resumed run may change (`overrides.RESUMABLE`, which the --resume help prints), one key each."""


def differences(a: Config, b: Config) -> list[tuple[str, object, object]]:
    """Every `section.field` whose value differs between two configs, as (key, a's, b's). Of two
    architectures, only the fields both have are compared: model.arch says the rest differs."""
    out = []
    da, db = a.to_dict(), b.to_dict()
    for section, fields in da.items():
        for name, value in fields.items():
            if name in db[section] and db[section][name] != value:
                out.append((f"{section}.{name}", value, db[section][name]))
    return out


def save_config(cfg: Config, path: Path, **write) -> None:
    """config.json, through the one write path (`files.write_text`: atomic, a full disk is one line)."""
    from .files import write_text

    write_text(path, json.dumps(cfg.to_dict(), indent=2) + "\n", **write)
