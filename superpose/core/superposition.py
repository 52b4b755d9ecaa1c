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

The paper's ablations are the same pieces recombined: input-only superposition bags the input
and predicts one token (`bag_targets(..., mode="input")`), output-only reads ordinary tokens and
predicts the next s (`next_window_targets`), and MCEAlt (App. C.2, `losses.MCE_ALT`) scores the
probability mass on the bag instead of the mean log-probability of its tokens. The losses are
entries of core/losses.py (`loss=` names one); their fused kernels are core/loss_kernels.py.
Every public function checks its arguments (core/arg_checks.py): a wrong shape, dtype or value is
a ValueError or TypeError naming the argument.
"""

from __future__ import annotations

import math
from enum import StrEnum

import torch
import torch.nn.functional as F
from torch import Tensor

from .arg_checks import check_size, check_target_ids, check_targets, check_tensor
from .loss_kernels import ChunkedLinearNLL, WeightedNLL
from .losses import MCE, bag_loss

__all__ = ["IGNORE_INDEX", "WEIGHT_SCHEMES", "Mode", "bag_entropy_floor", "bag_targets", "bag_weights",
           "chunked_multi_hot_cross_entropy", "count_valid_targets", "mi_bag_weights", "multi_hot_cross_entropy",
           "next_bag_targets", "next_window_targets", "superpose_embeddings", "superpose_token_embeddings",
           "target_coefficients"]

IGNORE_INDEX = -100
WEIGHT_SCHEMES = ("uniform", "power", "exp", "mi")
"""The named slot weightings `bag_weights` knows (`tst.weights`); "mi" needs a corpus's fit."""


class Mode(StrEnum):
    """Which side of the model a superposition phase bags (paper §5.2, Fig. 6): the one place
    that says how many raw tokens an input position reads and how many targets it has."""

    FULL = "full"
    """Bagged input, next-bag target (the method)."""
    INPUT = "input"
    """Bagged input, one target: the first token of the next bag (the token right after the bag)."""
    OUTPUT = "output"
    """Ordinary token input (rows of L raw tokens, no extra data), each position's target the next
    s tokens (the multi-hot loss over a sliding window)."""

    def input_bag(self, bag_size: int) -> int:
        """Raw tokens averaged into one input position: s, or 1 for ordinary token input."""
        return 1 if self is Mode.OUTPUT else bag_size

    def target_bag(self, bag_size: int) -> int:
        """Targets per position: s, or 1 for one next token."""
        return 1 if self is Mode.INPUT else bag_size

    def describe(self, bag_size: int) -> str:
        """What a phase of this mode reads and predicts, for the start-of-run lines."""
        return {Mode.FULL: f"bags of s={bag_size} in, next bag out",
                Mode.INPUT: f"bags of s={bag_size} in, the next bag's first token out",
                Mode.OUTPUT: f"tokens in, the next s={bag_size} tokens out"}[self]


def mode_of(mode: str) -> Mode:
    """`tst.mode` text -> its Mode; a ValueError naming the known ones otherwise."""
    if mode not in list(Mode):
        raise ValueError(f"unknown superposition mode {mode!r}; use {', '.join(Mode)}")
    return Mode(mode)


def superpose_embeddings(embeds: Tensor, bag_size: int) -> Tensor:
    """Average each bag of `bag_size` contiguous token embeddings into one position.

    embeds: (B, L*s, D) token embeddings -> (B, L, D) "s-token" embeddings,
        e_j = (1/s) * sum_{i<s} E[x_{j*s+i}]            (paper §3.1, Listing 2)

    The sum is accumulated in float32 and cast back to the input dtype, as the paper does, so
    bf16 embeddings lose no precision to the accumulation. With s = 1 the input is returned
    unchanged.
    """
    check_tensor(embeds, "embeds", "(B, L*s, D)", "float")
    if check_size(bag_size, "bag_size") == 1:
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
    check_tensor(input_ids, "input_ids", "(B, L*s)", "ids")
    check_tensor(weight, "weight", "(V, D)", "float")
    if check_size(bag_size, "bag_size") == 1:
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
    check_tensor(labels, "labels", "(B, L*s)", "ids")
    check_size(bag_size, "bag_size")
    B, T = labels.shape
    if T % bag_size:
        raise ValueError(f"label length {T} is not a multiple of bag_size {bag_size}")
    if bag_size == 1:
        return labels.view(B, T, 1)
    shifted = F.pad(labels[:, bag_size - 1 :], (0, bag_size - 1), value=ignore_index)
    return shifted.view(B, T // bag_size, bag_size)  # (B, L, s)


def next_window_targets(labels: Tensor, window: int, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Output-only superposition's targets: every position predicts the next `window` tokens.

    labels: (B, L) with labels[t] = token[t+1]  ->  targets (B, L, s), targets[b, t, i] =
    labels[b, t + i] (token t+1+i), `ignore_index` past the row's end. The input is the ordinary
    token sequence, so a row reads L + 1 tokens as in next-token training and no extra data;
    only the last s-1 positions lose targets. With window = 1 these are the next-token labels.
    """
    check_tensor(labels, "labels", "(B, L)", "ids")
    check_size(window, "window")
    B, L = labels.shape
    if window == 1:
        return labels.view(B, L, 1)
    padded = F.pad(labels, (0, window - 1), value=ignore_index)  # (B, L + s - 1)
    return padded.unfold(1, window, 1)  # (B, L, s), a strided view: row t is padded[t : t+s]


def bag_targets(labels: Tensor, bag_size: int, mode: str = "full", ignore_index: int = IGNORE_INDEX) -> Tensor:
    """The targets of a superposition phase from its rows' next-token labels.

    full:   labels (B, L*s) -> (B, L, s), the next bag (`next_bag_targets`).
    input:  labels (B, L*s) -> (B, L, 1), the first token of the next bag: the token right after
            the bag the position read (slot 0 of the next bag). The paper does not say which
            token its input-only ablation predicts; this one keeps the prediction "next".
    output: labels (B, L)   -> (B, L, s), the next s tokens (`next_window_targets`).
    With bag_size = 1 every mode gives the next-token labels (B, L, 1).
    """
    mode = mode_of(mode)
    if mode is Mode.OUTPUT:
        return next_window_targets(labels, bag_size, ignore_index)
    return next_bag_targets(labels, bag_size, ignore_index)[..., :mode.target_bag(bag_size)]


def mi_bag_weights(fit: dict, bag_size: int) -> Tensor:
    """Bag weights from the mutual-information fit MI(d) = c0 + a * d^k (`data/mutual_info.py`).

    Slot i (1-based) of a position's target bag is i raw tokens after the last token the position
    read, in full and output-only superposition alike, so it gets the information that token pair
    carries *because of* its distance: g(i) = a * i^k, the fit without its constant c0. The
    constant is what any two tokens of the same text share at any distance (and where the
    plug-in estimator's bias goes), the same for every slot, so adding it would only pull every
    weighting towards uniform. With k = -1 this is the paper's power law 1/i; a corpus whose
    information decays faster gets steeper weights. The paper fits this curve (§4.3) but does not
    say how it derives weights from it.
    """
    a, k = float(fit["a"]), float(fit["k"])
    if not (a > 0 and k < 0 and math.isfinite(a) and math.isfinite(k)):
        raise ValueError(f"the mutual-information fit (a={a:g}, k={k:g}) does not decay with distance, so it gives "
                         "no bag weights; use tst.weights=power or uniform")
    i = torch.arange(1, bag_size + 1, dtype=torch.float64)
    return bag_weights((a * i ** k).float(), bag_size)  # an extreme a over- or underflows float32: refused


def bag_weights(weights: str | Tensor | None, bag_size: int) -> Tensor:
    """Per-slot weights g(i), i = 1..s, as a float32 tensor of length s (paper §5.2, App. D).

    None or "uniform": g = 1.  "power": g = 1/i.  "exp": g = e^-i (modded-nanogpt PR #178).
    A tensor is taken as given (length s, non-negative, not all zero): "mi" weights are one, made
    from a corpus's fit by `mi_bag_weights`.
    """
    i = torch.arange(1, bag_size + 1, dtype=torch.float32)
    if weights is None or (isinstance(weights, str) and weights == "uniform"):
        return torch.ones(bag_size)
    if isinstance(weights, str):
        if weights == "power":
            return 1.0 / i
        if weights == "exp":
            return torch.exp(-i)
        if weights == "mi":
            raise ValueError("bag weights 'mi' come from a corpus's fit: pass mi_bag_weights(fit, s)")
        raise ValueError(f"unknown bag weights {weights!r}; use one of {', '.join(WEIGHT_SCHEMES)}")
    w = torch.as_tensor(weights, dtype=torch.float32).flatten()
    # NaN passes `w < 0` and `sum <= 0` alike and turns every parameter NaN: finiteness first.
    if w.numel() != bag_size or not bool(torch.isfinite(w).all()) or bool((w < 0).any()) or float(w.sum()) <= 0:
        raise ValueError(f"bag weights must be {bag_size} non-negative finite numbers, not all zero; got "
                         f"{w.tolist()}")
    # The losses normalise g~ = s * g / sum(g) in float32: a sum that overflows ([1e38] * 4) makes
    # every g~ 0 (loss 0, gradient 0: nothing trains), one that is subnormal makes s / sum(g) inf.
    total = w.sum()
    if not bool(torch.isfinite(total)) or not bool(torch.isfinite(bag_size / total)):
        raise ValueError(f"bag weights {w.tolist()} sum to {float(total):g}, which float32 cannot normalise "
                         "(s * g / sum(g)); scale them to about 1 (only their ratios matter)")
    return w


def multi_hot_cross_entropy(
    logits: Tensor,
    targets: Tensor,
    weights: str | Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
    reduction: str = "mean",
    loss: str = MCE.name,
) -> Tensor:
    """Multi-hot next-bag cross-entropy (MCE, paper §3.2, App. C.1, Listing 3), or MCEAlt.

    logits: (B, L, V); targets: (B, L, s) from `next_bag_targets` (or `bag_targets`).

    MCE (`losses.MCE`): the target is uniform over the bag, so KL(t || softmax(z)) = -(1/s) sum_i log p(y_i)
    - log s; the constant is dropped and the loss is a weighted mean of s ordinary CE terms against
    the *same* logits. We compute one log-sum-exp per position and gather the s target logits:

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

    MCEAlt (`losses.MCE_ALT`, paper App. C.2): the probability mass on the bag, one term per position,

        alt[b, j] = -log sum_i g~_i p(y[b, j, i]) = logsumexp(z[b, j]) - logsumexp_i(z[b, j, y_i] + log g~_i)

    over the position's valid slots: the full log-sum-exp once, and a log-sum-exp over the s
    gathered target logits, so still no copy of the logits. The bag is a multiset, as in MCE: a
    token that occurs twice in the bag is two slots, so its probability counts twice (the
    loss can go below 0, down to -log of the largest multiplicity, exactly where MCE's target puts
    weight 2/s on it). With uniform weights (g~ = 1) this is the paper's -log sum_{y in bag} P(y).
    "mean" averages alt over positions with a valid target, "sum" sums it (divide by
    `count_valid_targets` with the same loss), "none" returns alt (B, L).

    With s = 1 both are exactly `F.cross_entropy` (same kernel, same bits).
    """
    B, L, V = check_tensor(logits, "logits", "(B, L, V)", "float").shape
    s = check_targets(logits.shape, targets).shape[-1]
    check_target_ids(targets, ignore_index)
    if s == 1 and reduction in ("mean", "sum"):
        return F.cross_entropy(
            logits.reshape(B * L, V).float(), targets.reshape(B * L), ignore_index=ignore_index, reduction=reduction
        )
    if reduction == "none":
        entry = bag_loss(loss)
        z = logits.float()  # (B, L, V)
        valid = targets != ignore_index  # (B, L, s)
        lse = torch.logsumexp(z, dim=-1, keepdim=True)  # (B, L, 1)
        zy = z.gather(-1, targets.masked_fill(~valid, 0))  # (B, L, s)
        return entry.unreduced(lse, zy, valid, bag_weights(weights, s).to(zy.device))
    coef, mix = target_coefficients(targets, weights, ignore_index, reduction, loss)
    return WeightedNLL.apply(logits.reshape(B * L, V), targets.reshape(B * L, s).clamp(min=0),
                             coef.reshape(B * L, -1), None if mix is None else mix.reshape(B * L, s))


def target_coefficients(targets: Tensor, weights: str | Tensor | None, ignore_index: int, reduction: str,
                        loss: str = MCE.name) -> tuple[Tensor, Tensor | None]:
    """What the loss kernel weighs each target with -> (coef, mix), as the entry of `loss` says
    (core/losses.py): MCE coef (B, L, s) and mix None, MCEAlt coef (B, L, 1) and mix (B, L, s)."""
    entry = bag_loss(loss)
    s = targets.shape[-1]
    valid = targets != ignore_index  # (B, L, s)
    g = bag_weights(weights, s).to(targets.device)
    if reduction not in ("mean", "sum"):
        raise ValueError(f"unknown reduction {reduction!r}; use 'mean', 'sum' or 'none'")
    return entry.coefficients(valid, g, reduction)


def chunked_multi_hot_cross_entropy(
    hidden: Tensor,
    head: Tensor,
    targets: Tensor,
    weights: str | Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
    reduction: str = "sum",
    chunk_rows: int = 2048,
    loss: str = MCE.name,
) -> Tensor:
    """The LM head and the bag loss fused, `chunk_rows` positions at a time.

    hidden: (B, L, D) final hidden states (after the last norm); head: (V, D) the LM head's
    weight; targets: (B, L, s). Equal to `multi_hot_cross_entropy(hidden @ head.T, targets, ...)`,
    but the (B*L, V) logits never exist at once: each chunk's logits are made, reduced to its
    loss and to its gradients with respect to `hidden` and `head`, and dropped. Peak memory is
    chunk_rows x V instead of B*L x V (in float32), independent of the sequence length. With
    s = 1 it is the ordinary next-token loss. reduction: "mean" or "sum", and loss
    (a core/losses.py entry's name) as in `multi_hot_cross_entropy`.
    """
    B, L, D = check_tensor(hidden, "hidden", "(B, L, D)", "float").shape
    if check_tensor(head, "head", "(V, D)", "float").shape[1] != D:
        raise ValueError(f"head has shape {tuple(head.shape)}, but its D must match hidden's {D}")
    s = check_targets(hidden.shape, targets).shape[-1]
    check_size(chunk_rows, "chunk_rows")
    check_target_ids(targets, ignore_index)
    coef, mix = target_coefficients(targets, weights, ignore_index, reduction, loss)
    return ChunkedLinearNLL.apply(hidden.reshape(B * L, D), head, targets.reshape(B * L, s).clamp(min=0),
                                  coef.reshape(B * L, -1), None if mix is None else mix.reshape(B * L, s), chunk_rows)


def count_valid_targets(targets: Tensor, weights: str | Tensor | None = None, ignore_index: int = IGNORE_INDEX,
                        loss: str = MCE.name) -> Tensor:
    """The normaliser for reduction="sum": sum over valid targets of the normalised weight g~_i.

    targets (B, L, s) -> a float32 scalar. With uniform weights it is the number of valid target
    tokens; with s = 1 it is the number of ordinary next-token targets. For MCEAlt,
    whose terms are per position, the number of positions with a valid target.
    """
    check_tensor(targets, "targets", "(B, L, s)", "ids")
    g = bag_weights(weights, targets.shape[-1]).to(targets.device)
    return bag_loss(loss).count(targets != ignore_index, g)


def bag_entropy_floor(bag_size: int) -> float:
    """The lowest value the uniform MCE can reach: log s nats (the dropped KL constant)."""
    return math.log(bag_size)
