"""The fused kernels of the bag losses: the loss and its gradient of (N, V) logits in one pass.

`multi_hot_cross_entropy` and `chunked_multi_hot_cross_entropy` (core/superposition.py) call
these with the coefficients of a loss entry (core/losses.py). Two target layouts exist:
per-slot terms (coef (N, s), mix None: MCE) and one term per position over a log-weighted
mixture of its slots (coef (N, 1), mix (N, s): MCEAlt). Nothing here copies the logits s times:
one log-sum-exp per row and a gather of the s target logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# Rows of logits the loss works on at once: on CPU about 4M float32 elements (16 MiB) per
# temporary, so the float32 working copies of bf16 logits stay small and are reused by the
# allocator; on GPUs 256M (1 GiB), so a batch takes a few large kernels, not hundreds of small ones.
_ROW_ELEMENTS = 1 << 22
_ROW_ELEMENTS_GPU = 1 << 28


def nll_rows(z: Tensor, targets: Tensor, coef: Tensor, grad_out: Tensor | None, mix: Tensor | None = None) -> Tensor:
    """For float32 logits rows z (n, V): returns the loss of these rows; when `grad_out` (n, V,
    float32, may be z itself) is given, also writes the gradient dloss/dz into it.

    MCE (mix None), coef (n, s):   loss = sum c_i * (lse(z) - z[y_i])
                                   dz = softmax(z) * sum_i c_i - sum_i c_i * onehot(y_i)
    MCEAlt, coef (n, 1), mix (n, s) log-weights:
        a_i = z[y_i] + mix_i,      loss = sum c * (lse(z) - logsumexp_i a_i)
        q = softmax_i(a)           dz = softmax(z) * c - sum_i c * q_i * onehot(y_i)
    (the posterior q over the bag's slots takes the place of MCE's fixed slot weights).

    One pass builds exp(z - max) in the output buffer, which is then the softmax numerator: no
    separate log-sum-exp temporary, no second exponential.
    """
    zy = z.gather(-1, targets)  # (n, s), read before z may be overwritten
    m = z.amax(dim=-1, keepdim=True)  # (n, 1)
    e = torch.sub(z, m, out=grad_out) if grad_out is not None else z - m  # (n, V)
    e.exp_()
    total = e.sum(dim=-1, keepdim=True)  # (n, 1)
    lse = total.log() + m  # (n, 1)
    if mix is None:
        loss = (coef * (lse - zy)).sum()
        slot, row = coef, coef.sum(-1, keepdim=True)
    else:
        a = zy + mix  # (n, s)
        loss = (coef * (lse - torch.logsumexp(a, dim=-1, keepdim=True))).sum()
        slot, row = coef * torch.softmax(a, dim=-1), coef
    if grad_out is not None:
        e.mul_(row / total)
        e.scatter_add_(-1, targets, -slot)
    return loss


class WeightedNLL(torch.autograd.Function):
    """The bag loss of (N, V) logits (`nll_rows`); the gradient is made in the forward pass.

    The loss is linear in its upstream gradient, so forward writes dloss/dlogits straight into
    one (N, V) buffer in the logits' dtype, and backward only scales it. Nothing else of size
    (N, V) is kept: not the logits (the LM head's own backward needs its input, not its output),
    not a float32 copy, softmax or one-hot. Autograd through logsumexp + gather, or the paper's s
    `F.cross_entropy` calls (each saving its own log-softmax), would keep several. Rows are done
    `_ROW_ELEMENTS` at a time, so the float32 working copies of bf16 logits stay small.
    Backward can run once: the buffer is scaled in place and handed on as the gradient.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor, coef: Tensor, mix: Tensor | None) -> Tensor:
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
            loss += nll_rows(z, targets[sl], coef[sl], out, None if mix is None else mix[sl])
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
        return grad.mul_(grad_out.to(grad.dtype)), None, None, None


class ChunkedLinearNLL(torch.autograd.Function):
    """Forward computes the loss *and* both gradients chunk by chunk (the loss is linear in its
    upstream gradient, so backward only rescales them)."""

    @staticmethod
    def forward(ctx, h: Tensor, w: Tensor, targets: Tensor, coef: Tensor, mix: Tensor | None,
                chunk_rows: int) -> Tensor:
        grad_h = torch.empty_like(h)
        grad_w = torch.zeros_like(w, dtype=torch.float32)
        loss = torch.zeros((), dtype=torch.float32, device=h.device)
        for start in range(0, h.shape[0], chunk_rows):
            sl = slice(start, start + chunk_rows)
            z = F.linear(h[sl], w)  # (n, V) in the matmul dtype (bf16 under autocast)
            zf = z.float()  # z itself when float32: the gradient then overwrites the logits in place
            loss += nll_rows(zf, targets[sl], coef[sl], zf, None if mix is None else mix[sl])
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
        return grad_h * grad_out, grad_w * grad_out, None, None, None, None

