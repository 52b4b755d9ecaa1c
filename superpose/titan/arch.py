"""Each superpose architecture as a torchtitan model: the one place the two are mapped.

`TITAN_MODELS` maps `ModelConfig.arch` to a builder that turns a superpose `ModelConfig` into a
torchtitan `ModelSpec` of the same shape, built from torchtitan's own layer builders, so its
parallelize functions, pipelining, state-dict adapter and initialisation all apply:

    llama      -> torchtitan.models.llama3 (Llama3Model; complex RoPE, HF export through
                  Llama3StateDictAdapter, which permutes q/k for HF's rotate-half layout)
    qwen3_moe  -> torchtitan.models.qwen3  (Qwen3Model with every layer MoE; QK-norm, top-k
                  softmax routing with route_norm = norm_topk_prob)

What is torchtitan's and not superpose's, at the same shape: the weight initialisation
(torchtitan's per-model init), RMSNorm epsilon (torchtitan's 1e-5 / Qwen3's 1e-6), and for the
MoE the load balancing (torchtitan's auxiliary-loss-free expert bias, coefficient 1e-3, in place of
superpose's router_aux_coef loss). TST does not touch any of them: it only changes what enters
the first layer and what the last one is scored against.

attention: "sdpa" (default): causal attention over the whole row with RoPE positions 0..L-1, the
meaning superpose's trainer and the paper give a row, and the backend that trains on a CPU.
"flex": torchtitan's default, attention masked per document (phase 1 gives each row one
block, see trainer.py). torchtitan 0.3.0's FlexAttention has no backward on a CPU.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from torchtitan.models.common import Embedding, Linear, RMSNorm
from torchtitan.models.common.attention import FlexAttention, ScaledDotProductAttention
from torchtitan.protocols.model_spec import ModelSpec

from ..core.arch import ModelConfig
from ..core.llama import LLAMA
from ..core.qwen3_moe import QWEN3_MOE
from .compat import private_llama3, private_qwen3

ATTENTION = ("sdpa", "flex")


def _use_sdpa(model_cfg) -> None:
    """Swap every FlexAttention for F.scaled_dot_product_attention(is_causal=True)."""
    for _, _, parent, attr in list(model_cfg.traverse(FlexAttention.Config)):
        if isinstance(parent, list):
            parent[attr] = ScaledDotProductAttention.Config()
        else:
            setattr(parent, attr, ScaledDotProductAttention.Config())


def _llama(cfg: ModelConfig, flavor: str) -> ModelSpec:
    from torchtitan.models.common import ComplexRoPE
    from torchtitan.models.llama3 import Llama3Model, model_registry

    p = private_llama3()
    D, V = cfg.dim, cfg.vocab_size
    model = Llama3Model.Config(
        dim=D, vocab_size=V, enable_weight_tying=cfg.tie_embeddings,
        tok_embeddings=Embedding.Config(num_embeddings=V, embedding_dim=D, param_init=p.embedding_init),
        norm=RMSNorm.Config(normalized_shape=D, eps=cfg.norm_eps, param_init=p.norm_init),
        lm_head=Linear.Config(in_features=D, out_features=V, param_init=p.output_linear_init(D)),
        layers=p.build_layers(
            n_layers=cfg.n_layers, dim=D, n_heads=cfg.n_heads, n_kv_heads=cfg.n_kv_heads, hidden_dim=cfg.ffn_dim,
            rope=ComplexRoPE.Config(dim=cfg.head_dim, max_seq_len=cfg.max_seq_len, theta=cfg.rope_theta),
            fuse_qkv=True, attn_backend="flex"),
    )
    return dataclasses.replace(model_registry("debugmodel"), flavor=flavor, model=model)


def _qwen3_moe(cfg: ModelConfig, flavor: str) -> ModelSpec:
    from torchtitan.models.common import CosSinRoPE
    from torchtitan.models.qwen3 import Qwen3Model, model_registry

    dense = [i for i in range(cfg.n_layers) if not cfg.is_moe_layer(i)]
    if dense:
        raise ValueError(f"torchtitan's Qwen3 MoE makes every layer sparse; layers {dense} of this config are dense "
                         "(model.decoder_sparse_step / model.mlp_only_layers)")
    p = private_qwen3()
    D, V = cfg.dim, cfg.vocab_size
    model = Qwen3Model.Config(
        vocab_size=V, dim=D, norm=p.norm(D),
        tok_embeddings=Embedding.Config(num_embeddings=V, embedding_dim=D, param_init=p.embedding_init),
        lm_head=Linear.Config(in_features=D, out_features=V, param_init=p.linear_init),
        layers=p.build_moe_layers(
            n_layers=cfg.n_layers, dim=D, n_heads=cfg.n_heads, n_kv_heads=cfg.n_kv_heads, head_dim=cfg.head_dim,
            moe_hidden_dim=cfg.moe_ffn_dim, num_experts=cfg.n_experts, top_k=cfg.top_k, fuse_qkv=True,
            attn_backend="flex", moe_comm_backend="standard",
            rope=CosSinRoPE.Config(dim=cfg.head_dim, max_seq_len=cfg.max_seq_len, theta=cfg.rope_theta)),
    )
    return dataclasses.replace(model_registry("debugmodel_moe"), flavor=flavor, model=model)


TITAN_MODELS: dict[str, Callable[[ModelConfig, str], ModelSpec]] = {
    LLAMA.name: _llama,
    QWEN3_MOE.name: _qwen3_moe,
}
"""superpose `ModelConfig.arch` -> builder of the torchtitan ModelSpec of that shape."""


def titan_model_spec(cfg: ModelConfig, flavor: str, attention: str = "sdpa") -> ModelSpec:
    """The torchtitan ModelSpec of a superpose architecture (vocab_size must be set)."""
    if cfg.arch not in TITAN_MODELS:
        raise ValueError(f"no torchtitan model for architecture {cfg.arch!r}; known: {', '.join(TITAN_MODELS)}")
    if attention not in ATTENTION:
        raise ValueError(f"unknown attention {attention!r}; use one of {', '.join(ATTENTION)}")
    if cfg.vocab_size < 1:
        raise ValueError("model.vocab_size must be set (torchtitan sizes the model before it reads a tokenizer)")
    spec = TITAN_MODELS[cfg.arch](cfg.resolve(), flavor)
    if attention == "sdpa":
        _use_sdpa(spec.model)
    spec.superpose_model = cfg  # the shape it was built from, for export (ModelSpec is a plain dataclass)
    return spec
