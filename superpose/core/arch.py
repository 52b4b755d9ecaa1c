"""What every architecture shares: the base of its config and the record that names it.

An architecture is one module (core/llama.py, core/qwen3_moe.py) that makes its config class
(`ModelConfig` plus the fields only it has, and their checks) and one `Architecture` record: its
name (`model.arch`), config class, model class, Hugging Face name map and class, and what
`superpose presets` prints for it. core/model.py registers the records; everything else asks that
registry, never compares architecture names. A run's `Config.model` is an instance of its
architecture's class, so another architecture's field is not a field of it at all.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from torch import Tensor

from ..errors import UserError

INIT_SCHEMES = ("normal", "torch", "torch-attn", "torch-mlp", "titan")


@dataclass
class ModelConfig:
    """The fields of every architecture, the base of each one's config class (`LlamaConfig`,
    `Qwen3MoeConfig`; core/model.py's `model_config` picks the class from `arch`). Not a config by
    itself: the class is the architecture, so each has exactly its own fields and checks, with no
    field that another architecture would have to leave at its default. Nothing here is
    TST-specific: a phase-1 model is a phase-2 model."""

    vocab_size: int = 0
    """Vocabulary size of the embedding and LM head; 0 means: the data's tokenizer size (not
    data.vocab_size, which only sizes the default corpus's tokenizer)."""
    dim: int = 256
    """Model width D."""
    n_layers: int = 4
    """Number of transformer blocks."""
    n_heads: int = 4
    """Query heads H; the head width is dim / n_heads."""
    n_kv_heads: int = 0
    """Key/value heads K for grouped-query attention; 0 means n_heads (plain multi-head)."""
    ffn_dim: int = 0
    """SwiGLU hidden width F; 0 means 8/3 * dim rounded up to a multiple of 64."""
    rope_theta: float = 10000.0
    """RoPE base frequency."""
    norm_eps: float = 1e-5
    """RMSNorm epsilon."""
    max_seq_len: int = 2048
    """Longest sequence in positions the model is meant for (recorded for export)."""
    tie_embeddings: bool = False
    """Share the input embedding with the LM head. The paper keeps them untied."""
    init_std: float = 0.02
    """Standard deviation of the normal initialisation (the embeddings always; every weight under
    init=normal)."""
    init: str = "normal"
    """How the linear layers start (see `Transformer.init_weights`): normal (GPT-2: N(0, init_std),
    residual output projections / sqrt(2 n_layers)), torch (PyTorch's nn.Linear default,
    U(+-1/sqrt(fan_in)), for every linear layer and the LM head), or torch-attn / torch-mlp (the
    torch init for the attention or the MLP projections only, normal elsewhere), or titan
    (TorchTitan's Llama 3 init, which the paper most likely trained with: embeddings N(0, 1), a
    per-layer depth scaling, the head at dim^-0.5; see `init_titan`). TST is sensitive to it at
    small scale: benchmarks/records/crossover_*/ and long_small_*/."""
    arch: str = field(default="", init=False)
    """The architecture (core/model.py's registry): llama (core/llama.py: dense SwiGLU blocks) or
    qwen3_moe (core/qwen3_moe.py: Qwen3-MoE blocks, with QK-norm and a routed mixture of SwiGLU
    experts; exported as Qwen3MoeForCausalLM). Fixed by the class (each sets its own default), so
    not a constructor argument: --model.arch swaps the class (`overrides.set_field`), and only that
    architecture's own fields exist."""

    def __post_init__(self):
        if not self.arch:  # the base itself, as ModelConfig(...) was called when it held every architecture
            raise TypeError("ModelConfig holds the fields every architecture shares; make one architecture's config: "
                            "LlamaConfig(...), Qwen3MoeConfig(...) or model_config(arch=NAME, ...)")

    def resolve(self):
        """Fill the derived fields (n_kv_heads, ffn_dim) left at 0; call after all overrides."""
        if self.n_kv_heads == 0:
            self.n_kv_heads = self.n_heads
        if self.ffn_dim == 0:
            self.ffn_dim = 64 * math.ceil(8 * self.dim / 3 / 64)
        return self

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    def common_problems(self) -> list[str]:
        """Every invalid common field, as 'model.field: why' strings (empty if none)."""
        out = []
        for name in ("dim", "n_layers", "n_heads", "n_kv_heads", "ffn_dim", "max_seq_len"):
            if getattr(self, name) < 1:
                out.append(f"model.{name}: must be >= 1, got {getattr(self, name)}")
        if self.vocab_size < 0:
            out.append(f"model.vocab_size: must be >= 0 (0 = from the tokenizer), got {self.vocab_size}")
        if self.n_heads >= 1 and self.dim % self.n_heads:
            out.append(f"model.dim: {self.dim} must be divisible by model.n_heads={self.n_heads}")
        elif self.n_heads >= 1 and self.head_dim % 2:
            out.append(f"model.dim: head width dim/n_heads={self.head_dim} must be even for RoPE")
        if self.n_kv_heads >= 1 and self.n_heads % self.n_kv_heads:
            out.append(f"model.n_kv_heads: {self.n_kv_heads} must divide model.n_heads={self.n_heads}")
        if not all(math.isfinite(v) and v > 0 for v in (self.rope_theta, self.norm_eps, self.init_std)):
            out.append("model.rope_theta, model.norm_eps, model.init_std: must be finite and > 0")
        if self.init not in INIT_SCHEMES:
            out.append(f"model.init: must be one of {', '.join(INIT_SCHEMES)}, got {self.init!r}")
        return out

    def problems(self) -> list[str]:
        """Every invalid field (an architecture with fields of its own adds their checks)."""
        return self.common_problems()

    def check_buildable(self) -> None:
        """Raise a ValueError naming every field a model cannot be built with: a Python caller of
        build_model(LlamaConfig(dim=30, n_heads=4)) gets the field, not a shape error from torch."""
        problems = self.problems()
        if self.vocab_size == 0:
            problems.append("model.vocab_size: 0 means 'the tokenizer's size', so set it to that before building a model")
        if problems:
            raise UserError("invalid model config: " + "; ".join(problems))

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Architecture:
    """One architecture, as the rest of superpose sees it (see core/model.py to register one)."""

    name: str
    """Its `model.arch` value."""
    title: str
    """Its name in sentences: "Llama", "Qwen3-MoE"."""
    config: type[ModelConfig]
    """Its config class: `ModelConfig` plus its own fields, `arch` defaulting to `name`; overrides
    `problems` to check those fields."""
    model: type
    """Its model class: a `Transformer` (core/llama.py) or a subclass, built from its `config`."""
    hf_class: str
    """The transformers class it exports as: "LlamaForCausalLM"."""
    hf_model_type: str
    """Its config.json model_type: "llama"."""
    hf_names: dict[str, str]
    """superpose tensor name -> Hugging Face name, {i} the layer index (interop/hf_llama.py)."""
    hf_config: Callable[..., dict] = field(default=lambda cfg: {})
    """cfg -> its entries of config.json beyond Llama's."""
    from_hf_config: Callable[[dict], dict] = field(default=lambda c: {})
    """an HF config.json dict -> its own config fields (transformers' defaults where absent)."""
    hf_split: Callable[[str, Tensor], dict[str, Tensor] | None] = field(default=lambda name, tensor: None)
    """(superpose name, tensor) -> the HF tensors it is exported as, when it is not a renaming (else None)."""
    hf_join: Callable[..., dict[str, Tensor]] = field(default=lambda rest, cfg, where: {})
    """(HF tensors the name map did not place, cfg, folder) -> the superpose tensors made of them;
    takes what it used out of `rest` (what is left there has no place in the model)."""
    describe: Callable[..., str] = field(default=lambda cfg: "")
    """cfg -> what follows "N-layer <title>" in the model card ("" or " (8 experts, top-2)")."""
    experts: Callable[..., str] = field(default=lambda cfg: "-")
    """cfg -> the `superpose presets` experts column ("-" for a dense model)."""
