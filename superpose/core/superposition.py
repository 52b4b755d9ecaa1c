"""The Token Superposition Training math: three pure functions and their bag weights.

Token Superposition Training (TST; Peng, Gigant, Quesnelle, arXiv 2605.06546) trains the first
`r` of the optimizer steps on *bags* of `s` contiguous tokens, then switches to ordinary
next-token prediction. Patch-level training (Shao, Meng, Zhou, arXiv 2407.12665) is the same
algorithm. Everything TST adds to a transformer is here; the model itself never sees a bag:

    raw tokens (B, L*s) --embed--> (B, L*s, D) --superpose_embeddings--> (B, L, D)
        --unchanged transformer, RoPE positions 0..L-1--> logits (B, L, V)
    next-token labels (B, L*s) --next_bag_targets--> (B, L, s)
    multi_hot_cross_entropy(logits, targets) = weighted mean over the bag of CE(z, y_i)

With `s = 1` all three reduce exactly to an embedding lookup and ordinary cross-entropy.
Paper references: input side §3.1 and Listing 2, targets Listing 3, loss §3.2 and App. C/D.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = -100
WEIGHT_SCHEMES = ("uniform", "power", "exp")


def superpose_embeddings(embeds: Tensor, bag_size: int) -> Tensor:
    """Average each bag of `bag_size` contiguous token embeddings into one position.

    embeds: (B, L*s, D) token embeddings -> (B, L, D) "s-token" embeddings,
        e_j = (1/s) * sum_{i<s} E[x_{j*s+i}]            (paper §3.1, Listing 2)

    The sum is accumulated in float32 and cast back to the input dtype, as the paper does, so
    bf16 embeddings lose no precision to the accumulation. With s = 1 the input is returned
    unchanged.
    """
    if bag_size < 1:
        raise ValueError(f"bag_size must be >= 1, got {bag_size}")
    if bag_size == 1:
        return embeds
    B, T, D = embeds.shape
    if T % bag_size:
        raise ValueError(f"sequence length {T} is not a multiple of bag_size {bag_size}")
    bags = embeds.view(B, T // bag_size, bag_size, D)  # (B, L, s, D)
    return bags.float().mean(dim=2).to(embeds.dtype)  # (B, L, D)


def superpose_token_embeddings(input_ids: Tensor, weight: Tensor, bag_size: int) -> Tensor:
    """`superpose_embeddings(F.embedding(input_ids, weight), bag_size)`, in one kernel.

    input_ids: (B, L*s) token ids; weight: (V, D) the embedding table -> (B, L, D).

    `F.embedding_bag(mode="mean")` gathers and averages each bag without materialising the
    (B, L*s, D) token embeddings, and its backward adds each position's gradient / s straight
    into the table's rows, so phase 1's input side costs about what phase 2's lookup does. For a
    float32 table (the trainer's master weights) the result is the same float32 mean; other
    dtypes take the unfused path, which accumulates in float32.
    """
    if bag_size == 1:
        return F.embedding(input_ids, weight)
    if weight.dtype != torch.float32:
        return superpose_embeddings(F.embedding(input_ids, weight), bag_size)
    B, T = input_ids.shape
    if T % bag_size:
        raise ValueError(f"sequence length {T} is not a multiple of bag_size {bag_size}")
    bags = F.embedding_bag(input_ids.reshape(-1, bag_size), weight, mode="mean")  # (B*L, D)
    return bags.view(B, T // bag_size, weight.shape[1])  # (B, L, D)


def next_bag_targets(labels: Tensor, bag_size: int, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Turn next-token labels into next-bag targets (paper Listing 3).

    labels: (B, L*s) with labels[t] = token[t+1]  ->  targets (B, L, s).

    The labels are shifted left by s-1 and right-padded with `ignore_index`, then split into
    bags, so position j (which has read raw tokens j*s .. j*s+s-1) predicts the next bag, raw
    tokens (j+1)*s .. (j+1)*s+s-1. That keeps the prediction causal. Only the last position's
    slot 0 reaches the one extra label token; its slots 1..s-1 are `ignore_index`.
    """
    if bag_size < 1:
        raise ValueError(f"bag_size must be >= 1, got {bag_size}")
    B, T = labels.shape
    if T % bag_size:
        raise ValueError(f"label length {T} is not a multiple of bag_size {bag_size}")
    if bag_size == 1:
        return labels.view(B, T, 1)
    shifted = F.pad(labels[:, bag_size - 1 :], (0, bag_size - 1), value=ignore_index)
    return shifted.view(B, T // bag_size, bag_size)  # (B, L, s)


def bag_weights(weights: str | Tensor | None, bag_size: int) -> Tensor:
    """Per-slot weights g(i), i = 1..s, as a float32 tensor of length s (paper §5.2, App. D).

    None or "uniform": g = 1.  "power": g = 1/i.  "exp": g = e^-i (modded-nanogpt PR #178).
    A tensor is taken as given (length s, non-negative, not all zero).
    """
    i = torch.arange(1, bag_size + 1, dtype=torch.float32)
    if weights is None or (isinstance(weights, str) and weights == "uniform"):
        return torch.ones(bag_size)
    if isinstance(weights, str):
        if weights == "power":
            return 1.0 / i
        if weights == "exp":
            return torch.exp(-i)
        raise ValueError(f"unknown bag weights {weights!r}; use one of {', '.join(WEIGHT_SCHEMES)}")
    w = torch.as_tensor(weights, dtype=torch.float32).flatten()
    if w.numel() != bag_size or bool((w < 0).any()) or float(w.sum()) <= 0:
        raise ValueError(f"bag weights must be {bag_size} non-negative numbers, not all zero")
    return w


def multi_hot_cross_entropy(
    logits: Tensor,
    targets: Tensor,
    weights: str | Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
    reduction: str = "mean",
) -> Tensor:
    """Multi-hot next-bag cross-entropy (MCE, paper §3.2, App. C.1, Listing 3).

    logits: (B, L, V); targets: (B, L, s) from `next_bag_targets`.

    The target is uniform over the bag, so KL(t || softmax(z)) = -(1/s) sum_i log p(y_i) - log s;
    the constant is dropped and the loss is a weighted mean of s ordinary CE terms against the
    *same* logits. We compute one log-sum-exp per position and gather the s target logits:

        nll[b, j, i] = logsumexp(z[b, j]) - z[b, j, y[b, j, i]]           (B, L, s)

    never s copies of the (B, L, V) logits. Math is in float32 whatever the logits' dtype.

    reduction="mean" is the paper's loss: CE_i = mean of nll[..., i] over slot i's valid targets,
        loss = sum_i g_i * CE_i / sum_i g_i  (slots with no valid target are left out).
    reduction="sum" is sum over valid (b, j, i) of g~_i * nll[b, j, i], with g~ = s * g / sum(g)
        (so uniform weights are all 1): divide it by `count_valid_targets(targets, weights)`,
        summed over micro-batches or ranks, for a loss that is exact under gradient
        accumulation and data parallelism. It equals "mean" when every slot has the same number
        of valid targets; with the paper's padding they differ only through the last position.
    reduction="none" returns the weighted nll (B, L, s), zero where the target is ignored.

    With s = 1 this is exactly `F.cross_entropy` (same kernel, same bits).
    """
    B, L, V = logits.shape
    s = targets.shape[-1]
    assert targets.shape == (B, L, s), f"targets {tuple(targets.shape)} vs logits {tuple(logits.shape)}"
    if s == 1 and reduction in ("mean", "sum"):
        return F.cross_entropy(
            logits.reshape(B * L, V).float(), targets.reshape(B * L), ignore_index=ignore_index, reduction=reduction
        )
    if reduction == "none":
        z = logits.float()  # (B, L, V)
        valid = targets != ignore_index  # (B, L, s)
        lse = torch.logsumexp(z, dim=-1, keepdim=True)  # (B, L, 1)
        nll = (lse - z.gather(-1, targets.masked_fill(~valid, 0))).masked_fill(~valid, 0.0)  # (B, L, s)
        g = bag_weights(weights, s).to(nll.device)
        return nll * (g * (s / g.sum()))
    coef = target_coefficients(targets, weights, ignore_index, reduction)  # (B, L, s)
    return _WeightedNLL.apply(logits.reshape(B * L, V), targets.reshape(B * L, s).clamp(min=0), coef.reshape(B * L, s))


def target_coefficients(targets: Tensor, weights: str | Tensor | None, ignore_index: int, reduction: str) -> Tensor:
    """c[b, j, i] such that the loss is sum over (b, j, i) of c * nll: 0 for ignored targets.

    "mean": g_i / (valid count of slot i * sum of g over slots that have a valid target).
    "sum":  g~_i = s * g_i / sum(g).
    """
    s = targets.shape[-1]
    valid = (targets != ignore_index).float()  # (B, L, s)
    g = bag_weights(weights, s).to(targets.device)
    if reduction == "mean":
        count = valid.sum(dim=(0, 1))  # (s,)
        g = g * (count > 0)
        return valid * (g / (count.clamp(min=1) * g.sum()))
    if reduction == "sum":
        return valid * (g * (s / g.sum()))
    raise ValueError(f"unknown reduction {reduction!r}; use 'mean', 'sum' or 'none'")


# Rows of logits the loss works on at once: on CPU about 4M float32 elements (16 MiB) per
# temporary, so the float32 working copies of bf16 logits stay small and are reused by the
# allocator; on GPUs 256M (1 GiB), so a batch takes a few large kernels, not hundreds of small ones.
_ROW_ELEMENTS = 1 << 22
_ROW_ELEMENTS_GPU = 1 << 28


def _nll_rows(z: Tensor, targets: Tensor, coef: Tensor, grad_out: Tensor | None) -> Tensor:
    """For float32 logits rows z (n, V): returns sum c * (lse(z) - z[y]); when `grad_out` (n, V,
    float32, may be z itself) is given, also writes the gradient dloss/dz into it:

        dz = softmax(z) * sum_i c_i - sum_i c_i * onehot(y_i)

    One pass builds exp(z - max) in the output buffer, which is then the softmax numerator: no
    separate log-sum-exp temporary, no second exponential.
    """
    zy = z.gather(-1, targets)  # (n, s), read before z may be overwritten
    m = z.amax(dim=-1, keepdim=True)  # (n, 1)
    e = torch.sub(z, m, out=grad_out) if grad_out is not None else z - m  # (n, V)
    e.exp_()
    total = e.sum(dim=-1, keepdim=True)  # (n, 1)
    loss = (coef * (total.log() + m - zy)).sum()
    if grad_out is not None:
        e.mul_(coef.sum(-1, keepdim=True) / total)
        e.scatter_add_(-1, targets, -coef)
    return loss


class _WeightedNLL(torch.autograd.Function):
    """sum c * nll over the targets of (N, V) logits; the gradient is made in the forward pass.

    The loss is linear in its upstream gradient, so forward writes dloss/dlogits straight into
    one (N, V) buffer in the logits' dtype, and backward only scales it. Nothing else of size
    (N, V) is kept: not the logits (the LM head's own backward needs its input, not its output),
    not a float32 copy, softmax or one-hot. Autograd through logsumexp + gather, or the paper's s
    `F.cross_entropy` calls (each saving its own log-softmax), would keep several. Rows are done
    `_ROW_ELEMENTS` at a time, so the float32 working copies of bf16 logits stay small.
    Backward can run once: the buffer is scaled in place and handed on as the gradient.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor, coef: Tensor) -> Tensor:
        N, V = logits.shape
        need_grad = ctx.needs_input_grad[0]
        grad = torch.empty_like(logits) if need_grad else None  # (N, V) in the logits' dtype
        direct = need_grad and grad.dtype == torch.float32  # float32 logits: write the gradient in place
        loss = torch.zeros((), dtype=torch.float32, device=logits.device)
        rows = max(1, (_ROW_ELEMENTS if logits.device.type == "cpu" else _ROW_ELEMENTS_GPU) // V)
        for start in range(0, N, rows):
            sl = slice(start, start + rows)
            z = logits[sl].float()  # (n, V): a view for float32 logits, a copy for bf16
            out = grad[sl] if direct else (torch.empty_like(z) if need_grad else None)
            loss += _nll_rows(z, targets[sl], coef[sl], out)
            if need_grad and not direct:
                grad[sl] = out  # cast to the logits' dtype
        ctx.grad = grad
        return loss

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        grad, ctx.grad = ctx.grad, None  # used once, scaled in place and handed on
        if grad is None:
            raise RuntimeError("multi_hot_cross_entropy: backward called twice through the same loss; "
                               "compute the loss again for a second backward")
        return grad.mul_(grad_out.to(grad.dtype)), None, None


def chunked_multi_hot_cross_entropy(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    weights: str | Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
    reduction: str = "sum",
    chunk_rows: int = 2048,
) -> Tensor:
    """The LM head and the multi-hot loss fused, `chunk_rows` positions at a time.

    hidden: (B, L, D) final hidden states (after the last norm); weight: (V, D) LM head;
    targets: (B, L, s). Equal to `multi_hot_cross_entropy(hidden @ weight.T, targets, ...)`,
    but the (B*L, V) logits never exist at once: each chunk's logits are made, reduced to its
    loss and to its gradients with respect to `hidden` and `weight`, and dropped. Peak memory is
    chunk_rows x V instead of B*L x V (in float32), independent of the sequence length. With
    s = 1 it is the ordinary next-token loss. reduction: "mean" or "sum" as in
    `multi_hot_cross_entropy`.
    """
    B, L, D = hidden.shape
    s = targets.shape[-1]
    coef = target_coefficients(targets, weights, ignore_index, reduction).reshape(B * L, s)
    return _ChunkedLinearNLL.apply(hidden.reshape(B * L, D), weight, targets.reshape(B * L, s).clamp(min=0),
                                   coef, chunk_rows)


class _ChunkedLinearNLL(torch.autograd.Function):
    """Forward computes the loss *and* both gradients chunk by chunk (the loss is linear in its
    upstream gradient, so backward only rescales them)."""

    @staticmethod
    def forward(ctx, h: Tensor, w: Tensor, targets: Tensor, coef: Tensor, chunk_rows: int) -> Tensor:
        grad_h = torch.empty_like(h)
        grad_w = torch.zeros_like(w, dtype=torch.float32)
        loss = torch.zeros((), dtype=torch.float32, device=h.device)
        for start in range(0, h.shape[0], chunk_rows):
            sl = slice(start, start + chunk_rows)
            z = F.linear(h[sl], w)  # (n, V) in the matmul dtype (bf16 under autocast)
            zf = z.float()  # z itself when float32: the gradient then overwrites the logits in place
            loss += _nll_rows(zf, targets[sl], coef[sl], zf)
            dz = zf.to(z.dtype)
            if dz.dtype == h.dtype:
                torch.mm(dz, w.to(dz.dtype), out=grad_h[sl])  # (n, D)
            else:
                grad_h[sl] = dz @ w.to(dz.dtype)
            if dz.dtype == torch.float32:
                grad_w.addmm_(dz.t(), h[sl])  # (V, D)
            else:
                grad_w += (dz.t() @ h[sl].to(dz.dtype)).float()
        ctx.save_for_backward(grad_h, grad_w.to(w.dtype))
        return loss

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        grad_h, grad_w = ctx.saved_tensors
        return grad_h * grad_out, grad_w * grad_out, None, None, None


def count_valid_targets(targets: Tensor, weights: str | Tensor | None = None, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """The normaliser for reduction="sum": sum over valid targets of the normalised weight g~_i.

    targets (B, L, s) -> a float32 scalar. With uniform weights it is the number of valid target
    tokens; with s = 1 it is the number of ordinary next-token targets.
    """
    s = targets.shape[-1]
    g = bag_weights(weights, s).to(targets.device)
    g = g * (s / g.sum())
    return ((targets != ignore_index).float() * g).sum()


def bag_entropy_floor(bag_size: int) -> float:
    """The lowest value the uniform MCE can reach: log s nats (the dropped KL constant)."""
    return math.log(bag_size)
