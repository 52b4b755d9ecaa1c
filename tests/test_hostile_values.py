"""Hostile values (issue 31 items 4, 6, 7, 8): numbers that trained silently wrong or NaN, readers
pointed at the wrong folder, the tracebacks left, and messages that misled.

Run: OMP_NUM_THREADS=1 .venv/bin/pytest tests/test_hostile_values.py

CLI rows use test_hostile's runner: one `superpose...:` line on stderr holding the fragment, the
exit status, no traceback, and the shared run's files unchanged. Python API rows must raise a
ValueError naming the field, never an AssertionError or an error from deep inside torch.
"""

from __future__ import annotations

import pytest
import torch

from superpose.config import Config
from superpose.core.model import ModelConfig, build_model
from superpose.core.superposition import (bag_weights, chunked_multi_hot_cross_entropy, multi_hot_cross_entropy,
                                          superpose_embeddings)

from test_hostile import TINY, Case, digest, run_case, world  # noqa: F401 (world: the shared run, a fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


def compare(*extra: str) -> list[str]:
    """A 10-step compare on the tiny data (never started: every case is refused before a step)."""
    return ["compare", "--preset", "cpu-smoke", "--out", "{tmp}/c", "--data.path", "{data}", *TINY,
            "--train.steps=10", "--seeds", "1", "--baseline-lengths", "1", *extra]


def train(*extra: str) -> list[str]:
    return ["train", "--preset", "cpu-smoke", "--out", "{tmp}/r", "--data.path", "{data}", "--train.steps=4", *TINY,
            *extra]


CASES = [
    # --- item 4: values that trained silently wrong or NaN, refused with the field named
    Case("train-weight-decay-huge", train("--optim.weight_decay=1e300"), "optim.weight_decay: times optim.lr"),
    Case("train-eps-underflows", train("--optim.eps=1e-300"), "optim.eps: must be in [1e-30, 1]"),
    Case("train-lr-huge", train("--optim.lr=1e300"), "optim.lr: must be in (0, 1]"),
    Case("baselines-lr-huge", compare("--baselines", "optim.lr=1e300"), "--baselines optim.lr=1e300: invalid config"),
    Case("baselines-eps-underflows", compare("--baselines", "optim.eps=1e-300"), "optim.eps"),
    Case("baselines-warmup-past-decay", compare("--baselines", "optim.warmup_steps=50"),
         "--baselines optim.warmup_steps=50: a 10-step run decays before its 50-step warmup ends"),
    Case("baselines-field-twice", compare("--baselines", "model.init=normal,model.init=titan"),
         "sets model.init twice"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_hostile_value(case, world, tmp_path, capsys, monkeypatch):  # noqa: F811 (world is the fixture)
    if case.setup:
        case.setup(tmp_path, monkeypatch)
    args = [a.format(run=world["run"], data=world["data"], tmp=tmp_path) for a in case.args]
    before = digest(world["run"])
    code, err = run_case(case, args, capsys)
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith(("superpose:", "superpose-lm-eval:"))]
    assert len(lines) == 1 and case.needle in lines[0], err
    assert code == case.code, err
    assert digest(world["run"]) == before  # nothing already saved was touched
    assert not (tmp_path / "c").exists()  # a refused compare creates nothing


# ----------------------------------------------------------------------------- the same rule everywhere

def test_the_optim_rules_are_config_problems():
    """One validation path: every arm (train, compare, a --baselines variant, a resume) validates
    through Config.problems, so a value is refused by the same rule wherever it is given."""
    cfg = Config()
    cfg.optim.lr, cfg.optim.eps, cfg.optim.weight_decay = 0.5, 1e-31, 2.5
    problems = cfg.problems()
    assert any(p.startswith("optim.eps:") for p in problems)
    assert any(p.startswith("optim.weight_decay:") for p in problems)
    cfg.optim.eps, cfg.optim.weight_decay = 1e-30, 1.9  # at the edges: accepted
    assert not [p for p in cfg.problems() if p.startswith("optim.")]


# ----------------------------------------------------------------------------- the Python API

@pytest.mark.parametrize("weights", [[1e38] * 4, [1e-45] * 4], ids=["sum-overflows", "sum-subnormal"])
def test_bag_weights_float32_cannot_normalise_are_refused(weights):
    """[1e38] * 4 sums to inf in float32: every normalised weight became 0, so phase 1 trained
    with loss 0 and gradient 0 without a word."""
    with pytest.raises(ValueError, match="cannot normalise"):
        bag_weights(torch.tensor(weights), 4)
    logits, targets = torch.randn(2, 3, 10), torch.zeros(2, 3, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="cannot normalise"):
        multi_hot_cross_entropy(logits, targets, weights=torch.tensor(weights))
    assert torch.isfinite(bag_weights(torch.tensor([1e30] * 4), 4)).all()  # large but summable: taken


MODEL = dict(vocab_size=64, dim=32, n_layers=1, n_heads=4, n_kv_heads=4, ffn_dim=64)


@pytest.mark.parametrize("fields, field", [
    (dict(dim=30), "model.dim"), (dict(n_kv_heads=3), "model.n_kv_heads"), (dict(dim=-32), "model.dim"),
    (dict(vocab_size=0), "model.vocab_size"), (dict(n_layers=0), "model.n_layers"),
], ids=["dim-not-divisible", "kv-heads-not-dividing", "dim-negative", "vocab-zero", "no-layers"])
def test_build_model_names_the_invalid_field(fields, field):
    with pytest.raises(ValueError, match=field):
        build_model(ModelConfig(**{**MODEL, **fields}))


def test_empty_batches_are_one_value_error():
    model = build_model(ModelConfig(**MODEL))
    calls = [lambda: model(torch.zeros(0, 4, dtype=torch.long)), lambda: model(torch.zeros(2, 0, dtype=torch.long)),
             lambda: model(inputs_embeds=torch.zeros(0, 4, 32)),
             lambda: multi_hot_cross_entropy(torch.zeros(0, 2, 10), torch.zeros(0, 2, 4, dtype=torch.long)),
             lambda: chunked_multi_hot_cross_entropy(torch.zeros(2, 0, 4), torch.zeros(10, 4),
                                                     torch.zeros(2, 0, 4, dtype=torch.long)),
             lambda: superpose_embeddings(torch.zeros(0, 8, 4), 4)]
    for call in calls:
        with pytest.raises(ValueError, match="at least one row"):
            call()
