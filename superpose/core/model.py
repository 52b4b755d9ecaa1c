"""A plain Llama-style decoder in one file.

Features: RMSNorm (pre-norm), rotary position embeddings (RoPE, the "rotate half" layout used by
Hugging Face Llama, so export needs no q/k permutation), grouped-query attention through
`F.scaled_dot_product_attention`, a SwiGLU feed-forward, untied input embedding and LM head by
default (as in the TST paper), and an optional key/value cache (`KVCache`) for generation that
leaves the uncached forward untouched. Module names mirror Hugging Face's `LlamaForCausalLM`
(`embed_tokens`, `self_attn.q_proj`, `mlp.gate_proj`, ...), so the export map is almost the
identity.

The model knows nothing about token superposition: phase 1 calls `embed()`, averages bags with
`superposition.superpose_embeddings`, and feeds the result back through `inputs_embeds`. The
trunk then sees L positions with RoPE positions 0..L-1 exactly as in ordinary training.

Shapes: B batch, T positions, D model width, H query heads, K key/value heads, Dh head width,
F feed-forward width, V vocabulary.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


INIT_SCHEMES = ("normal", "torch", "torch-attn", "torch-mlp", "titan")
ARCHITECTURES = ("llama", "qwen3_moe")
MOE_FIELDS = ("n_experts", "top_k", "moe_ffn_dim", "norm_topk_prob", "router_aux_coef", "decoder_sparse_step",
              "mlp_only_layers")  # ModelConfig fields only qwen3_moe uses


# ---------------------------------------------------------------- TorchTitan's Llama 3 init
# As torchtitan 0.3.0 draws it (models/llama3/__init__.py, models/common/param_init.py): matrices
# truncated normal cut at +-2 (absolute, so ~100 std at 0.02: in effect a plain normal); the
# projections that write into the residual stream, and the MLP's up projection (titan's w3),
# scaled per layer by 1/sqrt(2 (layer + 1)), not by the model's depth; embeddings N(0, 1); the
# head truncated normal with std dim^-0.5 cut at +-3 std. `init_std` stands for titan's 0.02.


def titan_layer_std(cfg: ModelConfig, layer: int) -> float:
    """The std of layer `layer`'s (0-based) depth-scaled matrices under init=titan."""
    return cfg.init_std / math.sqrt(2 * (layer + 1))


def titan_normal_(weight: Tensor, std: float) -> Tensor:
    """torchtitan's matrix init: trunc_normal_ with its default absolute cut at +-2."""
    return nn.init.trunc_normal_(weight, mean=0.0, std=std, a=-2.0, b=2.0)


def titan_head_(weight: Tensor, dim: int, generator: torch.Generator | None = None) -> Tensor:
    """torchtitan's output-head init: truncated normal, std dim^-0.5, cut at +-3 std."""
    std = dim ** -0.5
    return nn.init.trunc_normal_(weight, mean=0.0, std=std, a=-3 * std, b=3 * std, generator=generator)


@dataclass
class ModelConfig:
    """The architecture. Nothing here is TST-specific: a phase-1 model is a phase-2 model."""

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
    arch: str = "llama"
    """llama (this file: dense SwiGLU blocks) or qwen3_moe (core/moe.py: Qwen3-MoE blocks, with
    QK-norm and a routed mixture of SwiGLU experts; exported as Qwen3MoeForCausalLM). The fields
    below (MOE_FIELDS) are qwen3_moe's and must keep their defaults under llama."""
    n_experts: int = 0
    """qwen3_moe: experts E per MoE layer (HF num_experts)."""
    top_k: int = 2
    """qwen3_moe: experts each token is sent to (HF num_experts_per_tok)."""
    moe_ffn_dim: int = 0
    """qwen3_moe: the SwiGLU width of each expert (HF moe_intermediate_size); dense layers use ffn_dim."""
    norm_topk_prob: bool = True
    """qwen3_moe: renormalise each token's top-k router probabilities to sum to 1 (Qwen3-MoE's
    released models do; HF's config default is False)."""
    router_aux_coef: float = 0.001
    """qwen3_moe: coefficient of the load-balancing loss added to the training loss (HF
    router_aux_loss_coef; 0.001 is Qwen3-MoE's default)."""
    decoder_sparse_step: int = 1
    """qwen3_moe: layer i (0-based) is an MoE layer when (i + 1) % decoder_sparse_step == 0 and i is
    not in mlp_only_layers; the others are dense (HF decoder_sparse_step)."""
    mlp_only_layers: list[int] = field(default_factory=list)
    """qwen3_moe: layers (0-based) that are dense whatever decoder_sparse_step says
    (--model.mlp_only_layers=0,5)."""

    def resolve(self) -> ModelConfig:
        """Fill the derived fields (n_kv_heads, ffn_dim) left at 0; call after all overrides."""
        if self.n_kv_heads == 0:
            self.n_kv_heads = self.n_heads
        if self.ffn_dim == 0:
            self.ffn_dim = 64 * math.ceil(8 * self.dim / 3 / 64)
        return self

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    def problems(self) -> list[str]:
        """Every way this architecture is invalid, as 'field: why' strings (empty if none)."""
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
        if self.arch not in ARCHITECTURES:
            out.append(f"model.arch: must be one of {', '.join(ARCHITECTURES)}, got {self.arch!r}")
        elif self.arch == "qwen3_moe":
            from .moe import moe_problems

            out += moe_problems(self)
        else:  # a dense model would silently ignore them
            default = ModelConfig()
            moe_only = [f"model.{f}" for f in MOE_FIELDS if getattr(self, f) != getattr(default, f)]
            if moe_only:
                out.append(f"{', '.join(moe_only)}: only for model.arch=qwen3_moe (this model is {self.arch}); add "
                           "--model.arch=qwen3_moe or drop them")
        return out

    def is_moe_layer(self, i: int) -> bool:
        """Whether layer i (0-based) routes its tokens to experts (HF Qwen3MoeDecoderLayer's rule)."""
        return (self.arch == "qwen3_moe" and self.n_experts > 0 and i not in self.mlp_only_layers
                and (i + 1) % self.decoder_sparse_step == 0)

    def to_dict(self) -> dict:
        return asdict(self)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # Normalise in float32 (as HF Llama does) so bf16 activations keep their scale exactly.
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def rope_cos_sin(positions: Tensor, head_dim: int, theta: float) -> tuple[Tensor, Tensor]:
    """cos and sin tables (T, Dh) for the given positions, in float32.

    Frequencies are theta^(-2k/Dh) for k < Dh/2, repeated once ("rotate half" layout).
    """
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    angles = positions.float()[:, None] * inv_freq[None, :]  # (T, Dh/2)
    angles = torch.cat((angles, angles), dim=-1)  # (T, Dh)
    return angles.cos(), angles.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate x (B, heads, T, Dh) by position: x*cos + rotate_half(x)*sin, in float32."""
    xf = x.float()
    x1, x2 = xf.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return (xf * cos + rotated * sin).to(x.dtype)


class LayerCache:
    """One layer's keys and values of the positions seen so far, (B, K, S, Dh) each."""

    def __init__(self):
        self.k: Tensor | None = None
        self.v: Tensor | None = None

    @property
    def length(self) -> int:
        return 0 if self.k is None else self.k.shape[2]

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Add the new positions' k, v (B, K, T, Dh); return all of them (B, K, S + T, Dh)."""
        self.k = k if self.k is None else torch.cat((self.k, k), dim=2)
        self.v = v if self.v is None else torch.cat((self.v, v), dim=2)
        return self.k, self.v


class KVCache:
    """Keys and values of every layer for incremental decoding: pass the same cache to each
    `Transformer.forward` call and give it only the new tokens."""

    def __init__(self, n_layers: int):
        self.layers = [LayerCache() for _ in range(n_layers)]

    @property
    def length(self) -> int:
        """Positions already decoded (the RoPE position of the next input)."""
        return self.layers[0].length


class Attention(nn.Module):
    """Grouped-query attention with RoPE; qk_norm=True adds Qwen3's RMSNorm of each query and key
    head over its Dh channels, before RoPE (`q_norm`, `k_norm`, one weight of Dh shared by the heads)."""

    def __init__(self, cfg: ModelConfig, qk_norm: bool = False):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)
        self.q_norm = RMSNorm(cfg.head_dim, cfg.norm_eps) if qk_norm else None
        self.k_norm = RMSNorm(cfg.head_dim, cfg.norm_eps) if qk_norm else None

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, cache: LayerCache | None = None) -> Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim)  # (B, T, H, Dh)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim)  # (B, T, K, Dh)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)  # (B, H, T, Dh), (B, K, T, Dh)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, K, T, Dh)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        mask, causal = None, True
        if cache is not None:
            past = cache.length
            k, v = cache.append(k, v)  # (B, K, S, Dh): the cached positions, then these T
            if past:
                # The T queries are the last T of the S positions. SDPA's is_causal aligns its mask
                # top-left, which is wrong when T < S, so build the bottom-right one.
                S = k.shape[2]
                mask, causal = torch.ones(T, S, dtype=torch.bool, device=x.device).tril(diagonal=S - T), False
        # enable_gqa lets each group of H/K query heads share one key/value head without a copy.
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                           enable_gqa=self.n_kv_heads != self.n_heads)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))  # (B, T, D)


class FeedForward(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.dim, cfg.ffn_dim, bias=False)
        self.up_proj = nn.Linear(cfg.dim, cfg.ffn_dim, bias=False)
        self.down_proj = nn.Linear(cfg.ffn_dim, cfg.dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    """x + attn(norm(x)), then + mlp(norm(x))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mlp = FeedForward(cfg)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, cache: LayerCache | None = None) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.resolve()
        assert cfg.vocab_size > 0, "resolve vocab_size from the tokenizer before building the model"
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(self.make_block(cfg, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    def make_block(self, cfg: ModelConfig, layer: int) -> nn.Module:
        """Block `layer` of the stack: the one thing another architecture (core/moe.py) changes."""
        return Block(cfg)

    @torch.no_grad()
    def init_weights(self) -> None:
        """Initialise every weight according to `config.init`. Uses torch's global RNG: seed it
        first for a reproducible initialisation.

        normal: N(0, init_std), residual output projections (o_proj, down_proj) scaled by
        1/sqrt(2*n_layers) (GPT-2) so the residual stream's variance does not grow with depth.
        torch: PyTorch's own nn.Linear default, U(+-1/sqrt(fan_in)) (std 1/sqrt(3 fan_in): 0.051 at
        fan_in 128), for the attention, the MLP and the LM head; no depth scaling. At d=128 a block
        then writes roughly an order of magnitude more into the residual stream at init.
        torch-attn / torch-mlp: the torch init for that sub-block only, normal for the rest.
        Embeddings are N(0, init_std) and norms 1 under every scheme but titan (`init_titan`)."""
        cfg = self.config
        std, scheme = cfg.init_std, cfg.init
        if scheme == "titan":
            return self.init_titan()
        nn.init.normal_(self.embed_tokens.weight, std=std)
        for block in self.layers:
            attn, mlp = block.self_attn, block.mlp
            torch_init = {"attn": scheme in ("torch", "torch-attn"), "mlp": scheme in ("torch", "torch-mlp")}
            # Draw in one fixed order (inputs of both sub-blocks, then outputs) so a seed gives the
            # same weights under init=normal as it always has.
            for part, lin in (("attn", attn.q_proj), ("attn", attn.k_proj), ("attn", attn.v_proj),
                              ("mlp", mlp.gate_proj), ("mlp", mlp.up_proj)):
                lin.reset_parameters() if torch_init[part] else nn.init.normal_(lin.weight, std=std)
            for part, lin in (("attn", attn.o_proj), ("mlp", mlp.down_proj)):
                if torch_init[part]:
                    lin.reset_parameters()  # kaiming_uniform_(a=sqrt(5)) = U(+-1/sqrt(fan_in))
                else:
                    nn.init.normal_(lin.weight, std=std / math.sqrt(2 * cfg.n_layers))
            block.input_layernorm.weight.fill_(1.0)
            block.post_attention_layernorm.weight.fill_(1.0)
        self.norm.weight.fill_(1.0)
        if not cfg.tie_embeddings:
            if scheme == "torch":
                self.lm_head.reset_parameters()
            else:
                nn.init.normal_(self.lm_head.weight, std=std)

    def init_titan(self) -> None:
        """init=titan: TorchTitan's Llama 3 init (see `titan_layer_std`). Embeddings N(0, 1); in
        layer i, q, k, v and the MLP's gate (titan's w1) N(0, init_std), o, up and down (wo, w3,
        w2) N(0, init_std / sqrt(2 (i + 1))); norms 1; the head truncated normal, std dim^-0.5."""
        cfg = self.config
        nn.init.normal_(self.embed_tokens.weight, std=1.0)
        for i, block in enumerate(self.layers):
            attn, mlp = block.self_attn, block.mlp
            for lin in (attn.q_proj, attn.k_proj, attn.v_proj, mlp.gate_proj):
                titan_normal_(lin.weight, cfg.init_std)
            for lin in (attn.o_proj, mlp.up_proj, mlp.down_proj):
                titan_normal_(lin.weight, titan_layer_std(cfg, i))
            block.input_layernorm.weight.fill_(1.0)
            block.post_attention_layernorm.weight.fill_(1.0)
        self.norm.weight.fill_(1.0)
        if not cfg.tie_embeddings:
            titan_head_(self.lm_head.weight, cfg.dim)

    def fresh_weights(self, names: list[str], generator: torch.Generator) -> dict[str, Tensor]:
        """New draws of the input embedding and/or LM head from the distributions `init_weights`
        uses, as full float32 CPU tensors, from `generator` (so every rank draws the same values).

        names: "embed_tokens.weight" and/or "lm_head.weight" (with tied embeddings the head is the
        embedding, and only that is drawn)."""
        cfg = self.config
        out = {}
        for name in names:
            if name == "lm_head.weight" and cfg.tie_embeddings:
                name = "embed_tokens.weight"
            V, D = cfg.vocab_size, cfg.dim
            if name == "lm_head.weight" and cfg.init == "torch":  # nn.Linear's default, U(+-1/sqrt(fan_in))
                out[name] = (torch.rand(V, D, generator=generator) * 2 - 1) / math.sqrt(D)
            elif name == "lm_head.weight" and cfg.init == "titan":
                out[name] = titan_head_(torch.empty(V, D), D, generator)
            elif name == "embed_tokens.weight" and cfg.init == "titan":
                out[name] = torch.randn(V, D, generator=generator)
            elif name in ("embed_tokens.weight", "lm_head.weight"):
                out[name] = torch.randn(V, D, generator=generator) * cfg.init_std
            else:
                raise ValueError(f"fresh_weights draws the embedding and the LM head only, not {name}")
        return out

    def embed(self, input_ids: Tensor) -> Tensor:
        """Token embeddings: (B, T) int -> (B, T, D)."""
        return self.embed_tokens(input_ids)

    def forward(self, input_ids: Tensor | None = None, *, inputs_embeds: Tensor | None = None,
                cache: KVCache | None = None, return_hidden: bool = False, return_router: bool = False):
        """Logits (B, T, V) from token ids (B, T) or from embeddings (B, T, D).

        return_hidden=True returns the final normed hidden states (B, T, D) instead, for a loss
        that applies the LM head itself in chunks (`chunked_multi_hot_cross_entropy`).
        return_router=True returns (that, None): a dense model routes nothing (the MoE model,
        core/moe.py, returns its `RouterStats` there), so the loss asks every model alike.

        Position t gets RoPE position t in either case, so superposed phase-1 inputs of L
        positions are rotated exactly like ordinary inputs of L tokens.

        With a `cache` (generation), the T inputs continue the cache.length positions already in
        it: they get RoPE positions cache.length .. cache.length+T-1, attend to the cached keys
        and values, and their own are appended. An empty cache computes exactly what no cache does.
        """
        assert (input_ids is None) != (inputs_embeds is None), "pass exactly one of input_ids, inputs_embeds"
        h = self.embed(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, D)
        start = 0 if cache is None else cache.length
        positions = torch.arange(start, start + h.shape[1], device=h.device)  # (T,)
        cos, sin = rope_cos_sin(positions, self.config.head_dim, self.config.rope_theta)
        for i, block in enumerate(self.layers):
            h = block(h, cos, sin, None if cache is None else cache.layers[i])
        h = self.norm(h)  # (B, T, D)
        out = h if return_hidden else self.lm_head(h)  # (B, T, V)
        return (out, None) if return_router else out

    def num_params(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.embed_tokens.weight.numel()
            if not self.config.tie_embeddings:
                n -= self.lm_head.weight.numel()
        return n

    def num_active_params(self, non_embedding: bool = False) -> int:
        """Parameters one token's forward pass uses: all of them in a dense model (the MoE model
        counts only top_k of its experts)."""
        return self.num_params(non_embedding)

    def flops_per_position(self, seq_len: int) -> int:
        """Training FLOPs per position (forward + backward = 3x forward), PaLM-style estimate:
        6 * matmul parameters + 12 * n_layers * D * T for attention scores and values. Matmul
        parameters are the *active* ones (an MoE token multiplies by top_k experts).

        In phase 1 one position carries s raw tokens, so FLOPs per *raw token* are this / s.
        """
        cfg = self.config
        norms = sum(m.weight.numel() for m in self.modules() if isinstance(m, RMSNorm))
        matmul_params = self.num_active_params(non_embedding=True) - norms
        matmul_params += cfg.vocab_size * cfg.dim  # the LM head is a matmul; the embedding lookup is not
        return 6 * matmul_params + 12 * cfg.n_layers * cfg.dim * seq_len


def model_class(cfg: ModelConfig) -> type[Transformer]:
    """The class of `cfg.arch`: this file's Llama, or core/moe.py's Qwen3-MoE (a Transformer too)."""
    if cfg.arch == "qwen3_moe":
        from .moe import MoETransformer

        return MoETransformer
    return Transformer


def empty_model(cfg: ModelConfig, device: str | torch.device = "cpu") -> Transformer:
    """A model of this architecture on `device` with uninitialised weights, for weights that come
    from elsewhere (a checkpoint, a state snapshot, a gathered FSDP state). Built on the meta
    device, so nothing is allocated twice and no RNG is touched."""
    with torch.device("meta"):
        model = model_class(cfg)(cfg)
    model.to_empty(device=device)
    if cfg.tie_embeddings:  # to_empty gives each module its own storage: tie them again
        model.lm_head.weight = model.embed_tokens.weight
    return model


def build_model(cfg: ModelConfig, device: str | torch.device = "cpu") -> Transformer:
    """A freshly initialised model: `empty_model`, then `init_weights` (seed torch first)."""
    model = empty_model(cfg, device)
    model.init_weights()
    return model
