"""Qwen3-MoE: the mixture-of-experts architecture behind the TST paper's headline run (10B total /
1B active, s = 16, r = 0.25), as Hugging Face's `Qwen3MoeForCausalLM`.

Llama's decoder (core/llama.py) with Qwen3's QK-norm (RMSNorm of each query/key head, before
RoPE) and, where `mlp_only_layers` / `decoder_sparse_step` say so, a routed mixture of SwiGLU
experts instead of the dense MLP (core/moe.py). Module names mirror transformers', so export is a
renaming plus splitting the stacked expert weights per expert (`hf_split`, `hf_join`). This
module is the architecture's one home: its config class (`Qwen3MoeConfig`), the model, the HF map.

TST needs nothing here: in phase 1 the router of every MoE layer sees the normed hidden state of
a *superposed* position (the mean of s token embeddings, after attention), and routes that one
position to top_k experts as a unit; all s tokens of a bag go to the same experts. The load and
the balancing loss are therefore counted per position (bag) in phase 1 and per token in phase 2.

Shapes: B batch, T positions, D width, E experts, k = top_k, F_e expert width, M MoE layers.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from torch import Tensor

from .arch import Architecture, ModelConfig
from .layers import (Attention, FeedForward, KVCache, LayerCache, RMSNorm, rope_cos_sin, titan_head_, titan_layer_std,
                     titan_normal_)
from .llama import HF_NAME_MAP, Transformer
from .moe import RouterStats, SparseMoE


@dataclass
class Qwen3MoeConfig(ModelConfig):
    """A Qwen3-MoE: the common fields (core/arch.py) and the MoE ones below."""

    arch: str = field(default="qwen3_moe", init=False)
    n_experts: int = 0
    """Experts E per MoE layer (HF num_experts); 0 is no default to train with, so a config must
    say how many (the presets cpu-moe and 10b-a1b do)."""
    top_k: int = 2
    """Experts each token is sent to (HF num_experts_per_tok)."""
    moe_ffn_dim: int = 0
    """The SwiGLU width of each expert (HF moe_intermediate_size); dense layers use ffn_dim."""
    norm_topk_prob: bool = True
    """Renormalise each token's top-k router probabilities to sum to 1 (Qwen3-MoE's released models
    do; HF's config default is False)."""
    router_aux_coef: float = 0.001
    """Coefficient of the load-balancing loss added to the training loss (HF router_aux_loss_coef;
    0.001 is Qwen3-MoE's default)."""
    decoder_sparse_step: int = 1
    """Layer i (0-based) is an MoE layer when (i + 1) % decoder_sparse_step == 0 and i is not in
    mlp_only_layers; the others are dense (HF decoder_sparse_step)."""
    mlp_only_layers: list[int] = field(default_factory=list)
    """Layers (0-based) that are dense whatever decoder_sparse_step says (--model.mlp_only_layers=0,5)."""

    def is_moe_layer(self, i: int) -> bool:
        """Whether layer i (0-based) routes its tokens to experts (HF Qwen3MoeDecoderLayer's rule)."""
        return self.n_experts > 0 and i not in self.mlp_only_layers and (i + 1) % self.decoder_sparse_step == 0

    def problems(self) -> list[str]:
        """Every invalid field, the common ones' and the MoE ones', as 'model.field: why' strings."""
        out = self.common_problems()
        if self.n_experts < 1:
            out.append(f"model.n_experts: must be >= 1 for model.arch=qwen3_moe, got {self.n_experts}")
        if self.top_k < 1:
            out.append(f"model.top_k: must be >= 1, got {self.top_k}")
        elif self.n_experts >= 1 and self.top_k > self.n_experts:
            out.append(f"model.top_k: must be <= model.n_experts={self.n_experts} (a token cannot use more experts "
                       f"than there are), got {self.top_k}")
        if self.moe_ffn_dim < 1:
            out.append(f"model.moe_ffn_dim: the expert width must be >= 1, got {self.moe_ffn_dim}")
        if self.decoder_sparse_step < 1:
            out.append(f"model.decoder_sparse_step: must be >= 1, got {self.decoder_sparse_step}")
        bad = [i for i in self.mlp_only_layers if not 0 <= i < self.n_layers]
        if bad:
            out.append(f"model.mlp_only_layers: layer indices must be in 0..{self.n_layers - 1}, got {bad}")
        if not (math.isfinite(self.router_aux_coef) and self.router_aux_coef >= 0):
            out.append(f"model.router_aux_coef: must be finite and >= 0, got {self.router_aux_coef}")
        return out


class MoEBlock(nn.Module):
    """x + attn(norm(x)) with QK-norm, then + moe(norm(x)) or + mlp(norm(x)) in a dense layer."""

    def __init__(self, cfg: Qwen3MoeConfig, layer: int):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.self_attn = Attention(cfg, qk_norm=True)
        self.post_attention_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.sparse = cfg.is_moe_layer(layer)
        self.mlp = SparseMoE(cfg) if self.sparse else FeedForward(cfg)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, cache: LayerCache | None = None
                ) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
        """(x (B, T, D), (counts, prob_sums) of this layer, or None in a dense layer)."""
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache)
        if not self.sparse:
            return x + self.mlp(self.post_attention_layernorm(x)), None
        out, counts, prob_sums = self.mlp(self.post_attention_layernorm(x))
        return x + out, (counts, prob_sums)


class MoETransformer(Transformer):
    """The Qwen3-MoE decoder: `Transformer`'s embedding, final norm, LM head, forward contract and
    KV cache, with `MoEBlock`s. forward(..., return_router=True) returns (out, RouterStats)."""

    def make_block(self, cfg: Qwen3MoeConfig, layer: int) -> nn.Module:
        return MoEBlock(cfg, layer)

    @torch.no_grad()
    def init_weights(self) -> None:
        """As `Transformer.init_weights` for attention, dense MLPs, norms, embedding and head
        (QK-norms 1). Routers N(0, init_std) under every scheme (as transformers initialises
        them); experts like the MLP projections: normal gives gate_up N(0, init_std) and down
        N(0, init_std / sqrt(2 n_layers)); torch / torch-mlp give U(+-1/sqrt(fan_in)) per expert."""
        cfg = self.config
        std, scheme = cfg.init_std, cfg.init
        if scheme == "titan":
            return self.init_titan()
        torch_init = {"attn": scheme in ("torch", "torch-attn"), "mlp": scheme in ("torch", "torch-mlp")}
        out_std = std / math.sqrt(2 * cfg.n_layers)
        nn.init.normal_(self.embed_tokens.weight, std=std)
        for block in self.layers:
            attn, mlp = block.self_attn, block.mlp
            for lin in (attn.q_proj, attn.k_proj, attn.v_proj):
                lin.reset_parameters() if torch_init["attn"] else nn.init.normal_(lin.weight, std=std)
            attn.o_proj.reset_parameters() if torch_init["attn"] else nn.init.normal_(attn.o_proj.weight, std=out_std)
            if block.sparse:
                nn.init.normal_(mlp.gate.weight, std=std)
                ex = mlp.experts
                if torch_init["mlp"]:  # U(+-1/sqrt(fan_in)), fan_in = D for gate/up, F_e for down
                    nn.init.uniform_(ex.gate_up_proj, -1 / math.sqrt(cfg.dim), 1 / math.sqrt(cfg.dim))
                    nn.init.uniform_(ex.down_proj, -1 / math.sqrt(cfg.moe_ffn_dim), 1 / math.sqrt(cfg.moe_ffn_dim))
                else:
                    nn.init.normal_(ex.gate_up_proj, std=std)
                    nn.init.normal_(ex.down_proj, std=out_std)
            else:
                for lin in (mlp.gate_proj, mlp.up_proj):
                    lin.reset_parameters() if torch_init["mlp"] else nn.init.normal_(lin.weight, std=std)
                mlp.down_proj.reset_parameters() if torch_init["mlp"] else nn.init.normal_(mlp.down_proj.weight,
                                                                                            std=out_std)
            for norm in (block.input_layernorm, block.post_attention_layernorm, attn.q_norm, attn.k_norm):
                norm.weight.fill_(1.0)
        self.norm.weight.fill_(1.0)
        if not cfg.tie_embeddings:
            self.lm_head.reset_parameters() if scheme == "torch" else nn.init.normal_(self.lm_head.weight, std=std)

    def init_titan(self) -> None:
        """init=titan as `Transformer.init_titan`, with torchtitan's MoE rule: the router and each
        expert's up and down projections (w3, w2) at the layer's depth-scaled std, the experts'
        gate (w1) at init_std."""
        cfg = self.config
        nn.init.normal_(self.embed_tokens.weight, std=1.0)
        for i, block in enumerate(self.layers):
            attn, mlp, layer_std = block.self_attn, block.mlp, titan_layer_std(cfg, i)
            for lin in (attn.q_proj, attn.k_proj, attn.v_proj):
                titan_normal_(lin.weight, cfg.init_std)
            titan_normal_(attn.o_proj.weight, layer_std)
            if block.sparse:
                titan_normal_(mlp.gate.weight, layer_std)
                Fe = cfg.moe_ffn_dim
                titan_normal_(mlp.experts.gate_up_proj[:, :Fe], cfg.init_std)  # gate rows (w1)
                titan_normal_(mlp.experts.gate_up_proj[:, Fe:], layer_std)  # up rows (w3)
                titan_normal_(mlp.experts.down_proj, layer_std)
            else:
                titan_normal_(mlp.gate_proj.weight, cfg.init_std)
                for lin in (mlp.up_proj, mlp.down_proj):
                    titan_normal_(lin.weight, layer_std)
            for norm in (block.input_layernorm, block.post_attention_layernorm, attn.q_norm, attn.k_norm):
                norm.weight.fill_(1.0)
        self.norm.weight.fill_(1.0)
        if not cfg.tie_embeddings:
            titan_head_(self.lm_head.weight, cfg.dim)

    def forward(self, input_ids: Tensor | None = None, *, inputs_embeds: Tensor | None = None,
                cache: KVCache | None = None, return_hidden: bool = False, return_router: bool = False):
        """As `Transformer.forward`; return_router=True returns (out, RouterStats of this pass)."""
        assert (input_ids is None) != (inputs_embeds is None), "pass exactly one of input_ids, inputs_embeds"
        h = self.embed(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, D)
        start = 0 if cache is None else cache.length
        positions = torch.arange(start, start + h.shape[1], device=h.device)  # (T,)
        cos, sin = rope_cos_sin(positions, self.config.head_dim, self.config.rope_theta)
        counts, prob_sums = [], []
        for i, block in enumerate(self.layers):
            h, routed = block(h, cos, sin, None if cache is None else cache.layers[i])
            if routed is not None:
                counts.append(routed[0])
                prob_sums.append(routed[1])
        h = self.norm(h)  # (B, T, D)
        out = h if return_hidden else self.lm_head(h)  # (B, T, V)
        if not return_router:
            return out
        stats = None
        if counts:
            stats = RouterStats(torch.stack(counts), torch.stack(prob_sums), h.shape[0] * h.shape[1])  # (M, E) each
        return out, stats

    def num_active_params(self, non_embedding: bool = False) -> int:
        """Parameters one token uses: all but the (E - k) experts it does not go to, per MoE layer."""
        cfg = self.config
        per_expert = 3 * cfg.dim * cfg.moe_ffn_dim
        idle = sum(1 for b in self.layers if b.sparse) * (cfg.n_experts - cfg.top_k) * per_expert
        return self.num_params(non_embedding) - idle


# ----------------------------------------------------------------------------- Hugging Face

# Llama's names plus QK-norm and the router; dense layers (mlp_only_layers) use Llama's mlp names.
HF_NAMES = {
    **HF_NAME_MAP,
    "layers.{i}.self_attn.q_norm.weight": "model.layers.{i}.self_attn.q_norm.weight",
    "layers.{i}.self_attn.k_norm.weight": "model.layers.{i}.self_attn.k_norm.weight",
    "layers.{i}.mlp.gate.weight": "model.layers.{i}.mlp.gate.weight",
}

# Stacked expert tensors -> the per-expert HF tensors they hold: superpose's (E, 2F, D) gate_up_proj
# is expert j's gate_proj (rows 0..F-1) over its up_proj (rows F..2F-1); (E, D, F) down_proj is
# expert j's down_proj. {j} is the expert index. The folder stores the experts one at a time, the
# layout of the released Qwen3-MoE checkpoints that transformers 4.x and 5.x both read.
EXPERT_TENSORS = {
    "layers.{i}.mlp.experts.gate_up_proj": ("model.layers.{i}.mlp.experts.{j}.gate_proj.weight",
                                            "model.layers.{i}.mlp.experts.{j}.up_proj.weight"),
    "layers.{i}.mlp.experts.down_proj": ("model.layers.{i}.mlp.experts.{j}.down_proj.weight",),
}
_EXPERTS = re.compile(r"layers\.(\d+)\.(mlp\.experts\.\w+)")
_HF_EXPERT = re.compile(r"model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight")


def hf_split(name: str, tensor: Tensor) -> dict[str, Tensor] | None:
    """A stacked expert tensor -> its per-expert HF tensors (None for any other tensor)."""
    layer = _EXPERTS.fullmatch(name)
    if layer is None:
        return None
    i, which = layer.groups()
    # gate_up_proj (E, 2F, D) -> gate, up (E, F, D) each; down_proj (E, D, F) as it is
    parts = tensor.chunk(2, dim=1) if which.endswith("gate_up_proj") else (tensor,)
    out = {}
    for template, part in zip(EXPERT_TENSORS[f"layers.{{i}}.{which}"], parts):
        for j in range(part.shape[0]):
            out[template.format(i=i, j=j)] = part[j]
    return out


def hf_join(rest: dict[str, Tensor], cfg: Qwen3MoeConfig, where) -> dict[str, Tensor]:
    """Per-expert HF tensors (taken out of `rest`) -> superpose's stacked gate_up_proj (E, 2F, D)
    and down_proj (E, D, F), float32; a ValueError when a layer lacks some of its experts."""
    experts = {}  # (layer, kind) -> {expert index: (F, D) or (D, F) tensor}
    for name in [n for n in rest if _HF_EXPERT.fullmatch(n)]:
        i, j, kind = _HF_EXPERT.fullmatch(name).groups()
        experts.setdefault((int(i), kind), {})[int(j)] = rest.pop(name).float()
    out = {}
    for i in sorted({i for i, _ in experts}):
        got = {kind: experts.get((i, kind), {}) for kind in ("gate_proj", "up_proj", "down_proj")}
        for kind, by_index in got.items():
            if sorted(by_index) != list(range(cfg.n_experts)):
                raise ValueError(f"{where}: layer {i} has {kind} for {len(by_index)} experts, its config.json says "
                                f"{cfg.n_experts}; the folder is incomplete")
        E = range(cfg.n_experts)
        gate, up, down = (torch.stack([got[k][j] for j in E]) for k in ("gate_proj", "up_proj", "down_proj"))
        out[f"layers.{i}.mlp.experts.gate_up_proj"] = torch.cat((gate, up), dim=1)  # (E, 2F, D)
        out[f"layers.{i}.mlp.experts.down_proj"] = down  # (E, D, F)
    return out


def hf_config(cfg: Qwen3MoeConfig) -> dict:
    """config.json's Qwen3-MoE entries (added to Llama's)."""
    return {"num_experts": cfg.n_experts, "num_experts_per_tok": cfg.top_k, "moe_intermediate_size": cfg.moe_ffn_dim,
            "norm_topk_prob": cfg.norm_topk_prob, "router_aux_loss_coef": cfg.router_aux_coef,
            "decoder_sparse_step": cfg.decoder_sparse_step, "mlp_only_layers": list(cfg.mlp_only_layers),
            "output_router_logits": False, "use_sliding_window": False, "sliding_window": None}


def from_hf_config(c: dict) -> dict:
    """The qwen3_moe fields of an HF config.json, with transformers' Qwen3MoeConfig defaults where one is absent."""
    return {"n_experts": c.get("num_experts", 128), "top_k": c.get("num_experts_per_tok", 8),
            "moe_ffn_dim": c.get("moe_intermediate_size", 768), "norm_topk_prob": bool(c.get("norm_topk_prob", False)),
            "router_aux_coef": float(c.get("router_aux_loss_coef", 0.001)),
            "decoder_sparse_step": c.get("decoder_sparse_step", 1),
            "mlp_only_layers": list(c.get("mlp_only_layers") or [])}


QWEN3_MOE = Architecture(
    name="qwen3_moe", title="Qwen3-MoE", config=Qwen3MoeConfig, model=MoETransformer, hf_class="Qwen3MoeForCausalLM",
    hf_model_type="qwen3_moe", hf_names=HF_NAMES, hf_config=hf_config, from_hf_config=from_hf_config,
    hf_split=hf_split, hf_join=hf_join,
    describe=lambda cfg: f" ({cfg.n_experts} experts, top-{cfg.top_k})",
    experts=lambda cfg: f"{cfg.top_k}/{cfg.n_experts}")
