"""Llama: a plain pre-norm decoder of dense SwiGLU blocks (the TST paper's dense model).

Features: the shared blocks of core/layers.py (RMSNorm, RoPE in the "rotate half" layout,
grouped-query attention, SwiGLU), untied input embedding and LM head by default (as in the TST
paper), an optional key/value cache (`KVCache`) for generation that leaves the uncached forward
untouched, and `Transformer`: the decoder (embedding, blocks, final norm, LM head) that other
architectures build on by changing `make_block` and the init (core/qwen3_moe.py). Module names
mirror Hugging Face's `LlamaForCausalLM`, so `HF_NAME_MAP` is a renaming under `model.`.

The model knows nothing about token superposition: phase 1 calls `embed()`, averages bags with
`superposition.superpose_embeddings`, and feeds the result back through `inputs_embeds`. The
trunk then sees L positions with RoPE positions 0..L-1 exactly as in ordinary training.

Shapes: B batch, T positions, D model width, V vocabulary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from torch import Tensor

from .arch import Architecture, ModelConfig
from .layers import (Attention, FeedForward, KVCache, LayerCache, RMSNorm, rope_cos_sin, titan_head_, titan_layer_std,
                     titan_normal_)


@dataclass
class LlamaConfig(ModelConfig):
    """A Llama: the common fields (core/arch.py) and nothing more."""

    arch: str = field(default="llama", init=False)


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
        cfg.check_buildable()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(self.make_block(cfg, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    def make_block(self, cfg: ModelConfig, layer: int) -> nn.Module:
        """Block `layer` of the stack: what another architecture (core/qwen3_moe.py) changes."""
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
        core/qwen3_moe.py, returns its `RouterStats` there), so the loss asks every model alike.

        Position t gets RoPE position t in either case, so superposed phase-1 inputs of L
        positions are rotated exactly like ordinary inputs of L tokens.

        With a `cache` (generation), the T inputs continue the cache.length positions already in
        it: they get RoPE positions cache.length .. cache.length+T-1, attend to the cached keys
        and values, and their own are appended. An empty cache computes exactly what no cache does.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids (B, T) and inputs_embeds (B, T, D)")
        x, name = (input_ids, "input_ids (B, T)") if inputs_embeds is None else (inputs_embeds, "inputs_embeds (B, T, D)")
        if x.dim() < 2 or x.shape[0] == 0 or x.shape[1] == 0:  # torch's own error names a reshape deep inside
            raise ValueError(f"{name} must hold at least one row of at least one position, got shape {tuple(x.shape)}")
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


# superpose name -> Hugging Face LlamaForCausalLM name; {i} is the layer index.
HF_NAME_MAP = {
    "embed_tokens.weight": "model.embed_tokens.weight",
    "layers.{i}.input_layernorm.weight": "model.layers.{i}.input_layernorm.weight",
    "layers.{i}.self_attn.q_proj.weight": "model.layers.{i}.self_attn.q_proj.weight",
    "layers.{i}.self_attn.k_proj.weight": "model.layers.{i}.self_attn.k_proj.weight",
    "layers.{i}.self_attn.v_proj.weight": "model.layers.{i}.self_attn.v_proj.weight",
    "layers.{i}.self_attn.o_proj.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "layers.{i}.post_attention_layernorm.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "layers.{i}.mlp.gate_proj.weight": "model.layers.{i}.mlp.gate_proj.weight",
    "layers.{i}.mlp.up_proj.weight": "model.layers.{i}.mlp.up_proj.weight",
    "layers.{i}.mlp.down_proj.weight": "model.layers.{i}.mlp.down_proj.weight",
    "norm.weight": "model.norm.weight",
    "lm_head.weight": "lm_head.weight",
}

LLAMA = Architecture(name="llama", title="Llama", config=LlamaConfig, model=Transformer, hf_class="LlamaForCausalLM",
                     hf_model_type="llama", hf_names=HF_NAME_MAP)
