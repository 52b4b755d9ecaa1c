"""Presets, overrides and validation: every shipped preset parses, every bad value is named.

Run: .venv/bin/pytest tests/test_config.py
"""

import pytest

from superpose.config import Config, parse_overrides
from superpose.presets import PRESETS, resolve
from superpose.errors import UserError


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_validates(name):
    cfg = resolve(name, [])
    assert cfg.model.ffn_dim > 0 and cfg.model.n_kv_heads > 0
    assert Config.from_dict(cfg.to_dict()) == cfg


def test_paper_shapes():
    m = resolve("270m", []).model
    assert (m.dim, m.n_layers, m.n_heads, m.n_kv_heads, m.ffn_dim, m.tie_embeddings) == (576, 30, 9, 3, 1536, False)
    m = resolve("600m", []).model
    assert (m.dim, m.n_layers, m.n_heads, m.n_kv_heads, m.ffn_dim) == (960, 32, 15, 5, 2560)


def test_both_override_forms():
    cfg = resolve("cpu-smoke", ["--tst.bag_size=6", "--train.steps", "12", "--optim.lr=1e-3",
                                "--model.tie_embeddings", "true", "--data.path=/x"])
    assert (cfg.tst.bag_size, cfg.train.steps, cfg.optim.lr, cfg.model.tie_embeddings, cfg.data.path) == \
        (6, 12, 1e-3, True, "/x")
    assert parse_overrides(["--a.b=c=d"]) == [("a.b", "c=d")]


def test_derived_fields_follow_overrides():
    cfg = resolve("cpu-smoke", ["--model.dim=96"])
    assert cfg.model.ffn_dim == 256  # 8/3 * 96 rounded up to 64, not the preset's 64-wide value


@pytest.mark.parametrize("args,needle", [
    (["--tst.ratio=1.5"], "tst.ratio: must be in [0, 1]"),
    (["--tst.bag_size=0"], "tst.bag_size: must be an integer >= 1"),
    (["--tst.weights=cubic"], "tst.weights: must be one of uniform, power, exp"),
    (["--train.steps=abc"], "train.steps: expected int"),
    (["--model.dim=31"], "model.dim: 31 must be divisible by model.n_heads=2"),
    (["--model.dim=30"], "must be even for RoPE"),
    (["--nope.x=1"], "unknown config key 'nope.x'"),
    (["--tst.size=1"], "tst has: bag_size, ratio, weights"),
    (["--train.steps"], "needs a value"),
    (["positional"], "unexpected argument"),
    (["--train.batch_size=6", "--train.grad_accum=4"], "train.grad_accum: must divide"),
])
def test_bad_values_are_named(args, needle):
    with pytest.raises(UserError) as e:
        resolve("cpu-smoke", args)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_all_problems_reported_at_once():
    with pytest.raises(UserError) as e:
        resolve("cpu-smoke", ["--tst.ratio=-1", "--tst.bag_size=0", "--optim.lr=0"])
    msg = str(e.value)
    assert "tst.ratio" in msg and "tst.bag_size" in msg and "optim.lr" in msg


def test_unknown_preset():
    with pytest.raises(UserError, match="choose one of: cpu-smoke"):
        resolve("gpt5", [])
