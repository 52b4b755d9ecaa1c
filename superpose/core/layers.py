"""The building blocks every architecture shares (core/llama.py, core/qwen3_moe.py stack them).

RMSNorm (pre-norm, float32 inside), rotary position embeddings in Hugging Face Llama's "rotate
half" layout (so export needs no q/k permutation), grouped-query attention through
`F.scaled_dot_product_attention` with an optional QK-norm (Qwen3), a SwiGLU feed-forward, the
key/value cache of generation, and torchtitan's init helpers (init=titan). Module names mirror
Hugging Face's (`self_attn.q_proj`, `mlp.gate_proj`, ...), so the export maps are almost the
identity. `cfg` is any architecture's config; only the fields every one has (core/arch.py's
`ModelConfig`) are read.

Shapes: B batch, T positions, D model width, H query heads, K key/value heads, Dh head width,
F feed-forward width, S cached plus new positions.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .arch import ModelConfig

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

