"""A Qwen3-MoE-style decoder in one file: the mixture-of-experts architecture behind the TST
paper's headline run (10B total / 1B active, s = 16, r = 0.25).

Features (module names mirror Hugging Face's `Qwen3MoeForCausalLM`, so export is a renaming plus
splitting the stacked expert weights per expert):
- attention as in `model.py` plus Qwen3's QK-norm (RMSNorm of each query/key head, before RoPE);
- per MoE layer a router (`mlp.gate`, linear D -> E), softmax in float32, the top_k experts of
  each token, optionally renormalised to sum to 1 (`norm_topk_prob`);
- E SwiGLU experts of their own width F_e, stored stacked: `gate_up_proj` (E, 2 F_e, D) (gate rows
  first, then up) and `down_proj` (E, D, F_e), as transformers 5 holds them in memory;
- tokens dispatched by sorting their (token, slot) assignments by expert, so each expert works on
  one contiguous slice: `torch._grouped_mm` does all experts in one kernel on CUDA (capability
  >= 9.0) in bfloat16, elsewhere a loop over the E experts (never over tokens) does the same slices;
- the Switch/Qwen load-balancing loss exactly as transformers' `load_balancing_loss_func`
  computes it (`load_balancing_loss`), returned by forward(return_router=True) for the trainer;
- dense SwiGLU layers where `mlp_only_layers` / `decoder_sparse_step` say so.

TST needs nothing here: in phase 1 the router of every MoE layer sees the normed hidden state of
a *superposed* position (the mean of s token embeddings, after attention), and routes that one
position to top_k experts as a unit; all s tokens of a bag go to the same experts. The load and
the balancing loss are therefore counted per position (bag) in phase 1 and per token in phase 2.

Shapes: B batch, T positions, D width, N = B*T routed positions, E experts, k = top_k,
F_e expert width, M MoE layers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .model import (Attention, FeedForward, KVCache, LayerCache, ModelConfig, RMSNorm, Transformer, rope_cos_sin,
                    titan_layer_std, titan_normal_, titan_head_)


def moe_problems(cfg: ModelConfig) -> list[str]:
    """Every invalid MoE field of a qwen3_moe config, as 'model.field: why' strings."""
    out = []
    if cfg.n_experts < 1:
        out.append(f"model.n_experts: must be >= 1 for model.arch=qwen3_moe, got {cfg.n_experts}")
    if cfg.top_k < 1:
        out.append(f"model.top_k: must be >= 1, got {cfg.top_k}")
    elif cfg.n_experts >= 1 and cfg.top_k > cfg.n_experts:
        out.append(f"model.top_k: must be <= model.n_experts={cfg.n_experts} (a token cannot use more experts "
                   f"than there are), got {cfg.top_k}")
    if cfg.moe_ffn_dim < 1:
        out.append(f"model.moe_ffn_dim: the expert width must be >= 1, got {cfg.moe_ffn_dim}")
    if cfg.decoder_sparse_step < 1:
        out.append(f"model.decoder_sparse_step: must be >= 1, got {cfg.decoder_sparse_step}")
    bad = [i for i in cfg.mlp_only_layers if not 0 <= i < cfg.n_layers]
    if bad:
        out.append(f"model.mlp_only_layers: layer indices must be in 0..{cfg.n_layers - 1}, got {bad}")
    if not (math.isfinite(cfg.router_aux_coef) and cfg.router_aux_coef >= 0):
        out.append(f"model.router_aux_coef: must be finite and >= 0, got {cfg.router_aux_coef}")
    return out


# ----------------------------------------------------------------------------- routing math

def route(x: Tensor, router_weight: Tensor, top_k: int, norm_topk_prob: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Router of one MoE layer, as `Qwen3MoeTopKRouter`.

    x: (N, D) normed hidden states; router_weight: (E, D).
    Returns probs (N, E) float32 softmax of the router logits, top_w (N, k) the weights of the
    chosen experts in x's dtype (renormalised to sum 1 when norm_topk_prob), top_i (N, k) their
    indices, most probable first.
    """
    logits = F.linear(x, router_weight)  # (N, E)
    probs = torch.softmax(logits, dim=-1, dtype=torch.float32)  # (N, E)
    top_w, top_i = torch.topk(probs, top_k, dim=-1)  # (N, k) each
    if norm_topk_prob:
        top_w = top_w / top_w.sum(dim=-1, keepdim=True)
    return probs, top_w.to(logits.dtype), top_i


@dataclass
class RouterStats:
    """What one forward pass routed, per MoE layer: enough for the load-balancing loss and the
    per-expert load. M = number of MoE layers."""

    counts: Tensor
    """(M, E) float32: positions sent to each expert (each position counts once per chosen expert,
    so a layer's row sums to k*N). No gradient: the top-k choice is not differentiable."""
    prob_sums: Tensor
    """(M, E) float32: the sum over positions of each expert's router probability (differentiable)."""
    positions: int
    """N: positions routed by each layer."""

    def aux_loss(self) -> Tensor:
        """`load_balancing_loss` of these statistics (a float32 scalar)."""
        return load_balancing_loss(self.counts, self.prob_sums, self.positions)


def load_balancing_loss(counts: Tensor, prob_sums: Tensor, positions: int) -> Tensor:
    """The Switch-Transformer load-balancing loss, as transformers' Qwen3-MoE computes it
    (`load_balancing_loss_func` without an attention mask):

        f_e = sum over layers of counts[:, e] / (M * N)     share of routing slots, sums to k
        P_e = sum over layers of prob_sums[:, e] / (M * N)  mean router probability, sums to 1
        loss = E * sum_e f_e * P_e

    Note the layers are pooled *before* the product (not a mean of per-layer losses), as in
    transformers. A uniform router gives f = k/E, P = 1/E, loss = k; its gradient flows through P
    only. counts, prob_sums: (M, E) -> a float32 scalar.
    """
    M, E = counts.shape
    rows = M * positions
    f = counts.sum(dim=0) / rows  # (E,)
    P = prob_sums.sum(dim=0) / rows  # (E,)
    return E * (f * P).sum()


# ----------------------------------------------------------------------------- experts

def grouped_mm_dtype(x: Tensor, *weights: Tensor) -> torch.dtype | None:
    """The dtype `torch._grouped_mm` runs this dispatch in, or None for the per-expert loop.

    Its supported case: a CUDA GPU of compute capability 9.0 or newer (H100, H200, B200), bfloat16
    (the activations' dtype, or autocast's: under train.dtype=bfloat16 the residual stream stays
    float32 and is cast here), and widths that keep its 16-byte row alignment (multiples of 8).
    On CPU torch 2.13 has a forward, but its backward fails when an expert gets no token."""
    if not (hasattr(torch, "_grouped_mm") and x.is_cuda and torch.cuda.get_device_capability(x.device) >= (9, 0)):
        return None
    dtype = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else x.dtype
    aligned = all(n % 8 == 0 for w in weights for n in w.shape[1:])
    return torch.bfloat16 if dtype == torch.bfloat16 and aligned else None


def grouped_linear(x: Tensor, weight: Tensor, counts: Tensor, dtype: torch.dtype | None) -> Tensor:
    """Row block e of x times expert e's weight, for all experts.

    x: (R, in) rows sorted by expert, the first counts[0] rows for expert 0, and so on;
    weight: (E, out, in) (nn.Linear layout per expert); counts: (E,) int -> (R, out).
    dtype: run as one `torch._grouped_mm` in this dtype (`grouped_mm_dtype`); None: the loop.
    """
    if dtype is not None:
        offs = counts.cumsum(0).to(torch.int32)  # (E,) end row of each expert's block
        return torch._grouped_mm(x.to(dtype), weight.to(dtype).transpose(1, 2), offs=offs)
    return _expert_loop(x, weight, counts)


@torch.compiler.disable
def _expert_loop(x: Tensor, weight: Tensor, counts: Tensor) -> Tensor:
    """The fallback of `grouped_linear`: a loop over the E experts, each on its contiguous slice
    (one host sync for the sizes). Left out of torch.compile graphs: the slice sizes change every
    step, and compiling them in would recompile every step (train.compile)."""
    blocks = x.split(counts.tolist())
    return torch.cat([F.linear(block, weight[e]) for e, block in enumerate(blocks)])


class Router(nn.Module):
    """The router of one MoE layer: a bias-free linear D -> E (HF `mlp.gate`)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(cfg.n_experts, cfg.dim))


class Experts(nn.Module):
    """E SwiGLU experts, stacked: expert e computes down[e] @ (silu(gate[e] @ x) * (up[e] @ x))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        E, D, Fe = cfg.n_experts, cfg.dim, cfg.moe_ffn_dim
        self.gate_up_proj = nn.Parameter(torch.empty(E, 2 * Fe, D))  # rows 0..Fe-1 gate, Fe..2Fe-1 up
        self.down_proj = nn.Parameter(torch.empty(E, D, Fe))

    def forward(self, x: Tensor, top_w: Tensor, top_i: Tensor) -> tuple[Tensor, Tensor]:
        """x: (N, D); top_w, top_i: (N, k) -> (sum over the k chosen experts of w * expert(x) (N, D),
        assignments per expert (E,) int64)."""
        N, D = x.shape
        k, E = top_i.shape[1], self.gate_up_proj.shape[0]
        flat = top_i.reshape(-1)  # (N*k,) expert of assignment a = token * k + slot
        order = flat.argsort(stable=True)  # (N*k,) assignments grouped by expert, token order within
        counts = torch.bincount(flat, minlength=E)  # (E,) assignments per expert
        xs = x[order // k]  # (N*k, D) the token of each sorted assignment
        dtype = grouped_mm_dtype(xs, self.gate_up_proj, self.down_proj)
        gate, up = grouped_linear(xs, self.gate_up_proj, counts, dtype).chunk(2, dim=-1)  # (N*k, Fe) each
        ys = grouped_linear(F.silu(gate) * up, self.down_proj, counts, dtype)  # (N*k, D)
        # Back to (token, slot) order by a gather with the inverse permutation (deterministic on
        # every device, unlike an index_add), then the router-weighted sum over the k slots.
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel(), device=order.device)
        y = ys[inverse].view(N, k, D)  # (N, k, D)
        return (y * top_w.unsqueeze(-1)).sum(dim=1), counts  # (N, D), (E,)


class SparseMoE(nn.Module):
    """Route each position to its top_k experts and mix their outputs (HF Qwen3MoeSparseMoeBlock)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.top_k, self.norm_topk_prob = cfg.top_k, cfg.norm_topk_prob
        self.gate = Router(cfg)
        self.experts = Experts(cfg)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x: (B, T, D) -> (out (B, T, D), counts (E,) float32, prob_sums (E,) float32)."""
        B, T, D = x.shape
        flat = x.reshape(B * T, D)  # (N, D)
        probs, top_w, top_i = route(flat, self.gate.weight, self.top_k, self.norm_topk_prob)
        out, counts = self.experts(flat, top_w, top_i)
        return out.view(B, T, D), counts.float(), probs.sum(dim=0)


class MoEBlock(nn.Module):
    """x + attn(norm(x)) with QK-norm, then + moe(norm(x)) or + mlp(norm(x)) in a dense layer."""

    def __init__(self, cfg: ModelConfig, layer: int):
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

    def make_block(self, cfg: ModelConfig, layer: int) -> nn.Module:
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
