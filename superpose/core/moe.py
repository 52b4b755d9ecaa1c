"""The mixture-of-experts blocks of a routed MoE layer (core/qwen3_moe.py stacks them).

- a router (`mlp.gate`, linear D -> E), softmax in float32, the top_k experts of each token,
  optionally renormalised to sum to 1 (`norm_topk_prob`);
- E SwiGLU experts of their own width F_e, stored stacked: `gate_up_proj` (E, 2 F_e, D) (gate rows
  first, then up) and `down_proj` (E, D, F_e), as transformers 5 holds them in memory;
- tokens dispatched by sorting their (token, slot) assignments by expert, so each expert works on
  one contiguous slice: `torch._grouped_mm` does all experts in one kernel on CUDA (capability
  >= 9.0) in bfloat16, elsewhere a loop over the E experts (never over tokens) does the same slices;
- the Switch/Qwen load-balancing loss exactly as transformers' `load_balancing_loss_func`
  computes it (`load_balancing_loss`), from the `RouterStats` a forward pass collects.

`cfg` below is a `Qwen3MoeConfig` (core/qwen3_moe.py): the MoE fields n_experts, top_k, moe_ffn_dim,
norm_topk_prob.

Shapes: B batch, T positions, D width, N = B*T routed positions, E experts, k = top_k,
F_e expert width, M MoE layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

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

    def __init__(self, cfg):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(cfg.n_experts, cfg.dim))


class Experts(nn.Module):
    """E SwiGLU experts, stacked: expert e computes down[e] @ (silu(gate[e] @ x) * (up[e] @ x))."""

    def __init__(self, cfg):
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

    def __init__(self, cfg):
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

