"""The TST math against naive implementations (the paper's Listings 2-3, written as loops).

Run: .venv/bin/pytest tests/test_superposition.py
"""

import math

import pytest
import torch
import torch.nn.functional as F

from superpose.core.superposition import (
    IGNORE_INDEX,
    bag_weights,
    count_valid_targets,
    multi_hot_cross_entropy,
    next_bag_targets,
    superpose_embeddings,
)


def naive_targets(labels, s):
    """Paper Listing 3, literally: pad right with s-1 ignores, drop the first s-1, view."""
    B, T = labels.shape
    out = torch.full((B, T // s, s), IGNORE_INDEX, dtype=labels.dtype)
    for b in range(B):
        for j in range(T // s):
            for i in range(s):
                t = j * s + i + s - 1
                if t < T:
                    out[b, j, i] = labels[b, t]
    return out


def naive_mce(logits, targets, weights):
    """The paper's loop: s calls of F.cross_entropy (mean over valid), weighted average."""
    s = targets.shape[-1]
    V = logits.shape[-1]
    terms, ws = [], []
    for i in range(s):
        y = targets[..., i].reshape(-1)
        if (y != IGNORE_INDEX).any():
            terms.append(F.cross_entropy(logits.reshape(-1, V).float(), y, ignore_index=IGNORE_INDEX))
            ws.append(weights[i])
    ws = torch.tensor(ws)
    return (torch.stack(terms) * ws).sum() / ws.sum()


def test_superpose_embeddings_is_the_bag_mean():
    torch.manual_seed(0)
    e = torch.randn(2, 12, 5)
    out = superpose_embeddings(e, 3)
    assert out.shape == (2, 4, 5)
    for j in range(4):
        torch.testing.assert_close(out[:, j], e[:, 3 * j:3 * j + 3].mean(1))


def test_superpose_embeddings_accumulates_in_fp32_and_keeps_dtype():
    torch.manual_seed(0)
    e = torch.randn(1, 64, 8).to(torch.bfloat16)
    out = superpose_embeddings(e, 16)
    assert out.dtype == torch.bfloat16
    expected = e.float().view(1, 4, 16, 8).sum(2).div(16).to(torch.bfloat16)
    assert torch.equal(out, expected)


def test_s1_is_identity_and_plain_ce():
    torch.manual_seed(0)
    e = torch.randn(2, 7, 4)
    assert superpose_embeddings(e, 1) is e
    labels = torch.randint(0, 11, (2, 7))
    t = next_bag_targets(labels, 1)
    assert torch.equal(t[..., 0], labels)
    logits = torch.randn(2, 7, 11)
    for red in ("mean", "sum"):
        got = multi_hot_cross_entropy(logits, t, reduction=red)
        want = F.cross_entropy(logits.reshape(-1, 11), labels.reshape(-1), reduction=red)
        assert torch.equal(got, want)
    assert count_valid_targets(t).item() == 14


@pytest.mark.parametrize("s", [2, 3, 4, 6])
def test_next_bag_targets_matches_listing3(s):
    labels = torch.randint(0, 50, (3, 4 * s))
    got = next_bag_targets(labels, s)
    assert torch.equal(got, naive_targets(labels, s))
    # Causality: position j read raw tokens j*s..j*s+s-1 (labels are tokens shifted by one),
    # so its slot i must be raw token (j+1)*s + i, i.e. labels[(j+1)*s + i - 1].
    assert got[0, 0, 0] == labels[0, s - 1]
    assert (got[:, -1, 1:] == IGNORE_INDEX).all() and (got[:, -1, 0] != IGNORE_INDEX).all()


@pytest.mark.parametrize("weights", [None, "uniform", "power", "exp", torch.tensor([0.5, 2.0, 1.0, 0.0])])
def test_mce_mean_equals_naive_loop(weights):
    torch.manual_seed(1)
    s, V = 4, 37
    logits = torch.randn(3, 5, V, requires_grad=True)
    targets = next_bag_targets(torch.randint(0, V, (3, 5 * s)), s)
    targets[1, 2, 1] = IGNORE_INDEX  # an extra ignored target
    w = bag_weights(weights, s)
    got = multi_hot_cross_entropy(logits, targets, weights)
    want = naive_mce(logits, targets, w)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    g1, = torch.autograd.grad(got, logits)
    g2, = torch.autograd.grad(want, logits)
    torch.testing.assert_close(g1, g2, rtol=1e-5, atol=1e-6)


def test_mce_sum_over_count_is_weighted_token_mean():
    torch.manual_seed(2)
    s, V = 3, 19
    logits = torch.randn(2, 6, V)
    targets = next_bag_targets(torch.randint(0, V, (2, 6 * s)), s)
    for weights in ("uniform", "power"):
        total = multi_hot_cross_entropy(logits, targets, weights, reduction="sum")
        count = count_valid_targets(targets, weights)
        per = multi_hot_cross_entropy(logits, targets, weights, reduction="none")
        g = bag_weights(weights, s) * s / bag_weights(weights, s).sum()
        assert per.shape == (2, 6, 3)
        torch.testing.assert_close(total, per.sum())
        torch.testing.assert_close(count, ((targets != IGNORE_INDEX).float() * g).sum())
    # With every slot equally filled, sum / count equals the paper's mean.
    full = torch.randint(0, V, (2, 6, s))
    torch.testing.assert_close(
        multi_hot_cross_entropy(logits, full, "power", reduction="sum") / count_valid_targets(full, "power"),
        multi_hot_cross_entropy(logits, full, "power"))


def test_mce_floor_is_log_s():
    # Logits that spread mass uniformly over the bag's s distinct tokens reach exactly log s.
    s, V = 4, 10
    targets = torch.arange(s).view(1, 1, s)
    logits = torch.full((1, 1, V), -1e4)
    logits[0, 0, :s] = 0.0
    assert math.isclose(multi_hot_cross_entropy(logits, targets).item(), math.log(s), rel_tol=1e-6)


def test_mce_bf16_logits_computed_in_fp32():
    torch.manual_seed(3)
    logits = torch.randn(2, 4, 50).to(torch.bfloat16)
    targets = torch.randint(0, 50, (2, 4, 3))
    got = multi_hot_cross_entropy(logits, targets)
    want = naive_mce(logits.float(), targets, torch.ones(3))
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want)


def test_bag_weights_shapes_and_errors():
    torch.testing.assert_close(bag_weights("power", 3), torch.tensor([1.0, 0.5, 1 / 3]))
    torch.testing.assert_close(bag_weights("exp", 2), torch.tensor([math.exp(-1), math.exp(-2)]))
    with pytest.raises(ValueError, match="unknown bag weights"):
        bag_weights("cubic", 3)
    with pytest.raises(ValueError, match="3 non-negative"):
        bag_weights(torch.tensor([1.0, -1.0, 1.0]), 3)
    with pytest.raises(ValueError, match="bag_size"):
        superpose_embeddings(torch.zeros(1, 4, 2), 0)
    with pytest.raises(ValueError, match="multiple"):
        next_bag_targets(torch.zeros(1, 5, dtype=torch.long), 2)


@pytest.mark.parametrize("s,reduction,weights", [(1, "sum", None), (4, "sum", None), (4, "mean", "power"),
                                                  (3, "sum", "exp")])
def test_chunked_fused_head_equals_dense(s, reduction, weights):
    from superpose.core.superposition import chunked_multi_hot_cross_entropy

    torch.manual_seed(4)
    B, L, D, V = 2, 6, 8, 29
    h = torch.randn(B, L, D, requires_grad=True)
    w = torch.randn(V, D, requires_grad=True)
    targets = next_bag_targets(torch.randint(0, V, (B, L * s)), s)
    dense = multi_hot_cross_entropy(h @ w.t(), targets, weights, reduction=reduction)
    chunked = chunked_multi_hot_cross_entropy(h, w, targets, weights, reduction=reduction, chunk_rows=5)
    torch.testing.assert_close(chunked, dense, rtol=1e-5, atol=1e-5)
    gh1, gw1 = torch.autograd.grad(dense * 1.7, (h, w))
    gh2, gw2 = torch.autograd.grad(chunked * 1.7, (h, w))
    torch.testing.assert_close(gh2, gh1, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gw2, gw1, rtol=1e-5, atol=1e-6)
