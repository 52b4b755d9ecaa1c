"""Issue 21: compare against the best baseline (--baselines), the paper's init (model.init=titan),
the unigram plateau, and the data each arm read.

Run: .venv/bin/pytest tests/test_best_baseline.py
"""

import json
import math

import numpy as np
import pytest
import torch

from superpose.cli import main
from superpose.core.arch import ModelConfig
from superpose.core.model import build_model, model_config
from superpose.data import mutual_info
from superpose.data import open_dataset
from superpose.errors import UserError
from superpose.experiments.baselines import best_baseline
from superpose.experiments.baselines import parse_baselines
from superpose.experiments.compare import compare
from superpose.experiments.summary import plateau_verdict
from superpose.experiments.report import interval
from superpose.experiments.stats import stats

from conftest import tiny_config
from test_trainer import records, train


def test_parse_baselines_forms_and_refusals():
    vs = parse_baselines("model.init=normal; optim.lr=6e-3,model.init=titan")
    assert [v.name for v in vs] == ["model.init=normal", "optim.lr=6e-3,model.init=titan"]
    assert vs[1].overrides == (("optim.lr", "6e-3"), ("model.init", "titan"))
    assert parse_baselines(None) == [] and parse_baselines("") == []
    for bad, match in (("model.init", "section.field=value"), ("lr=3", "section.field=value"),
                       ("tst.bag_size=2", "fixed for every arm"), ("data.seq_len=32", "fixed for every arm"),
                       ("train.steps=9", "fixed for every arm"), ("model.dim=8", "fixed for every arm"),
                       ("model.init=normal;model.init=normal", "twice")):
        with pytest.raises(UserError, match=match):
            parse_baselines(bad)


def test_compare_reports_the_best_baseline_paired_by_seed(tiny_data, tmp_path):
    """Each variant is one more trunk per seed, trained exactly like a straight baseline run with
    its overrides; per length the report names the lowest-mean baseline and TST's paired gain
    against it, the phase-1 loss beside the unigram entropy, and tokens per parameter."""
    cfg = tiny_config(tiny_data, train__eval_every=4)
    variants = parse_baselines("model.init=torch;optim.lr=0.01")
    rep = compare(cfg, tmp_path / "cmp", seeds=[0, 1], factors=(1.0,), log=lambda m: None, baselines=variants)
    per_seed = [json.loads((tmp_path / "cmp" / f"seed-{k}" / "result.json").read_text())["by_steps"]["8"]
                for k in (0, 1)]
    # The variant trunk is the straight baseline run with its override, bit for bit.
    straight = train(tiny_config(tiny_data, train__eval_every=4, tst__ratio=0.0, train__seed=1, model__init="torch"),
                     tmp_path / "straight")
    got = [r["loss"] for r in records(tmp_path / "cmp" / "seed-1" / "baseline-model.init=torch-8", "train")]
    assert got == [r["loss"] for r in records(straight.run_dir, "train")]
    losses = {"own": [next(b for b in r["baseline"] if b["steps"] == 8)["val_loss"] for r in per_seed],
              **{v.name: [r["variants"][v.name]["val_loss"] for r in per_seed] for v in variants}}
    best = min(losses, key=lambda k: sum(losses[k]))
    assert rep["best_baseline"] == best
    assert rep["best_baseline_gain"]["values"] == pytest.approx(
        [b - r["tst"]["val_loss"] for b, r in zip(losses[best], per_seed)])
    assert set(rep["baselines_val_loss"]) == {"own", "model.init=torch", "optim.lr=0.01"}
    assert rep["lengths"][0]["best_baseline"] == best
    for key in ("mean", "std", "ci95", "n", "values"):
        assert key in rep["lengths"][0]["best_baseline_gain"]
    # Phase 1's loss at the switch is the mean training loss of its last steps, next to the entropy.
    tst_train = records(tmp_path / "cmp" / "seed-0" / "tst", "train")
    assert per_seed[0]["tst"]["phase1_loss_at_switch"] == pytest.approx(
        np.mean([r["loss"] for r in tst_train if r["phase"] == 1][-50:]))
    assert rep["unigram_entropy"] == pytest.approx(mutual_info.token_entropy(open_dataset(tiny_data)))
    # Tokens per parameter: TST reads s x the rows in phase 1 (4 of 8 steps here).
    d = rep["data_per_arm"]
    assert d["tst"]["tokens_seen"] == 4 * 4 * 16 * 4 + 4 * 4 * 16 and d["own"]["tokens_seen"] == 8 * 4 * 16
    n_body = per_seed[0]["tst"]["params_non_embedding"]
    assert d["tst"]["tokens_per_param_non_embedding"] == pytest.approx(d["tst"]["tokens_seen"] / n_body)
    assert 0 < d["own"]["epochs"] < d["tst"]["epochs"]
    text = (tmp_path / "cmp" / "report.md").read_text()
    assert "against the best baseline" in text and "unigram entropy" in text and "gain vs the best baseline" in text
    # A rerun with other baselines would mix configs: refused in one line.
    with pytest.raises(UserError, match="--baselines"):
        compare(cfg, tmp_path / "cmp", seeds=[0, 1], factors=(1.0,), log=lambda m: None,
                baselines=parse_baselines("model.init=titan"))


def test_iso_loss_speedup_against_each_baseline(tiny_data, tmp_path):
    """Every baseline variant has the own baseline's decayed lengths, so TST's iso-loss speedup is
    read against each; the report gives it against the best. A variant that changes nothing trains
    the own baseline's runs bit for bit, so its speedup is the own one exactly."""
    cfg = tiny_config(tiny_data, train__eval_every=4)
    same = parse_baselines(f"optim.lr={cfg.optim.lr!r}")
    rep = compare(cfg, tmp_path / "iso", seeds=[0, 1], factors=(1.0, 2.0), log=lambda m: None, baselines=same)
    for k in (0, 1):
        r = json.loads((tmp_path / "iso" / f"seed-{k}" / "result.json").read_text())["by_steps"]["8"]
        v = r["variants"][same[0].name]
        assert next(b for b in r["baseline"] if b["steps"] == 8)["val_loss"] == v["val_loss"]
        for key in ("iso_loss_step_ratio", "iso_loss_speedup", "iso_loss_kind"):
            assert key in v
        assert v["iso_loss_step_ratio"] == r["iso_loss_step_ratio"] and v["iso_loss_kind"] == r["iso_loss_kind"]
        assert 0.5 <= v["iso_loss_step_ratio"] <= 2.0  # between the lengths run, or a bound at their ends
    assert rep["best_baseline"] == "own"  # a tie keeps the own baseline
    assert rep["best_baseline_iso_loss_step_ratio"]["values"] == rep["iso_loss_step_ratio"]["values"]
    assert rep["best_baseline_iso_loss_kinds"] == rep["iso_loss_kinds"]
    assert any(x.startswith("iso-loss speedup against the best baseline (own): ") for x in rep["verdicts"])
    assert "iso-loss speedup vs the best baseline, steps" in (tmp_path / "iso" / "report.md").read_text()


def test_best_baseline_reads_the_winning_variants_speedup_and_tolerates_old_seeds():
    def seed(own, var, var_iso=True):
        v = {"val_loss": var, **({"iso_loss_speedup": 1.3, "iso_loss_step_ratio": 1.4, "iso_loss_kind": "interpolated"}
                                 if var_iso else {})}
        return {"tst": {"steps": 10, "val_loss": 3.0}, "baseline": [{"steps": 10, "val_loss": own}],
                "variants": {"model.init=normal": v},
                "iso_loss_speedup": 1.1, "iso_loss_step_ratio": 1.2, "iso_loss_kind": "interpolated"}
    rep = best_baseline({0: seed(3.2, 3.1), 1: seed(3.3, 3.15)})
    assert rep["best_baseline"] == "model.init=normal"
    assert rep["best_baseline_iso_loss_step_ratio"]["values"] == [1.4, 1.4]
    assert rep["best_baseline_iso_loss_speedup"]["values"] == [1.3, 1.3]
    # A seed written before variants had a speedup: the gain is still reported, the speedup is not.
    old = best_baseline({0: seed(3.2, 3.1), 1: seed(3.3, 3.15, var_iso=False)})
    assert old["best_baseline_gain"]["n"] == 2 and "best_baseline_iso_loss_step_ratio" not in old


def test_bad_variant_value_fails_before_training(tiny_data, tmp_path, capsys):
    code = main(["compare", "--out", str(tmp_path / "c"), "--data.path", str(tiny_data), "--preset", "cpu-smoke",
                 "--baselines", "model.init=bogus"])
    assert code == 2
    err = capsys.readouterr().err
    assert "--baselines model.init=bogus" in err and "model.init: must be one of" in err and "Traceback" not in err
    assert not (tmp_path / "c" / "seed-0").exists()


def test_scan_reports_best_baseline_per_length_and_one_seed_has_no_band(tiny_data, tmp_path):
    cfg = tiny_config(tiny_data, train__eval_every=4)
    rep = compare(cfg, tmp_path / "scan", seeds=[0], factors=(1.0,), steps=[8, 12], log=lambda m: None,
                  baselines=parse_baselines("model.init=titan"))
    assert [ln["steps"] for ln in rep["lengths"]] == [8, 12]
    assert all(ln["best_baseline"] in ("own", "model.init=titan") for ln in rep["lengths"])
    # The trend and crossover of the gain against the best baseline, fitted like the own one.
    assert rep["best_crossover"]["lengths"] == [8, 12]
    assert any(v.startswith("trend: the gain against the best baseline") for v in rep["verdicts"])
    text = (tmp_path / "scan" / "report.md").read_text()
    assert "one seed, so no band" in text and "n/a (one seed)" in text
    # One seed has no spread: no "std nan" in any verdict or table.
    assert "nan" not in text and not any("nan" in v for ln in rep["lengths"] for v in ln["verdicts"])
    # No zero-width band such as "(+0.094 to +0.094)" anywhere.
    for ln in rep["lengths"]:
        g = ln["equal_steps_loss_gain"]["mean"]
        assert f"({g:+.3f} to {g:+.3f})" not in text
    assert (tmp_path / "scan" / "gain_vs_length.png").is_file()


def test_interval_text():
    assert interval(stats([1.0])) == "n/a (one seed)"
    assert interval(stats([0.1, 0.2, 0.3])).startswith("-") or "to" in interval(stats([0.1, 0.2, 0.3]))


def test_plateau_verdict():
    assert "learned context" in plateau_verdict(6.0, 6.52)
    assert "token frequencies only" in plateau_verdict(6.5, 6.52)
    assert "before it had learned" in plateau_verdict(7.8, 6.52)


def test_token_entropy_is_the_unigram_entropy(tiny_data):
    ds = open_dataset(tiny_data)
    tokens = ds.train.read(0, ds.train.num_tokens)
    p = np.bincount(tokens) / len(tokens)
    p = p[p > 0]
    want = float(-(p * np.log(p)).sum())
    assert mutual_info.token_entropy(ds, chunk=1000) == pytest.approx(want, rel=1e-12)
    # prepare records it in mi.json, and unigram_entropy reads it from there.
    assert mutual_info.load(tiny_data)["unigram_entropy"] == pytest.approx(want, rel=1e-12)
    assert mutual_info.unigram_entropy(tiny_data) == pytest.approx(want, rel=1e-12)


def _titan(**kw) -> ModelConfig:
    return model_config(dim=256, n_layers=4, n_heads=4, vocab_size=2048, init="titan", **kw)


@pytest.mark.parametrize("arch", ["llama", "qwen3_moe"])
def test_titan_init_matches_torchtitan_llama3(arch):
    """torchtitan 0.3.0's Llama 3 init: embeddings N(0, 1); q, k, v and the MLP gate (w1) at 0.02;
    o, up (w3) and down (w2) at 0.02 / sqrt(2 (layer + 1)); head trunc. normal dim^-0.5 cut at 3 std."""
    kw = dict(arch="qwen3_moe", n_experts=4, top_k=2, moe_ffn_dim=128, norm_eps=1e-6) if arch == "qwen3_moe" else {}
    torch.manual_seed(0)
    m = build_model(_titan(**kw))
    sd = dict(m.named_parameters())
    assert sd["embed_tokens.weight"].std().item() == pytest.approx(1.0, rel=0.02)
    head = sd["lm_head.weight"]
    assert head.std().item() == pytest.approx(256 ** -0.5 * 0.986, rel=0.02)  # a +-3 std cut keeps 98.6% of std
    assert head.abs().max().item() <= 3 * 256 ** -0.5 + 1e-6
    for i in range(4):
        layer_std = 0.02 / math.sqrt(2 * (i + 1))
        for name in ("q_proj", "k_proj", "v_proj"):
            assert sd[f"layers.{i}.self_attn.{name}.weight"].std().item() == pytest.approx(0.02, rel=0.06)
        assert sd[f"layers.{i}.self_attn.o_proj.weight"].std().item() == pytest.approx(layer_std, rel=0.06)
        if arch == "llama":
            mlp = {n: sd[f"layers.{i}.mlp.{n}.weight"] for n in ("gate_proj", "up_proj", "down_proj")}
        else:
            gu = sd[f"layers.{i}.mlp.experts.gate_up_proj"]
            mlp = {"gate_proj": gu[:, :128], "up_proj": gu[:, 128:], "down_proj": sd[f"layers.{i}.mlp.experts.down_proj"]}
            assert sd[f"layers.{i}.mlp.gate.weight"].std().item() == pytest.approx(layer_std, rel=0.15)
        assert mlp["gate_proj"].std().item() == pytest.approx(0.02, rel=0.06)
        for n in ("up_proj", "down_proj"):
            assert mlp[n].std().item() == pytest.approx(layer_std, rel=0.06), (i, n)
    # The re-initialisation at the switch (tst.reinit) draws from the same distributions.
    fresh = m.fresh_weights(["embed_tokens.weight", "lm_head.weight"], torch.Generator().manual_seed(1))
    assert fresh["embed_tokens.weight"].std().item() == pytest.approx(1.0, rel=0.02)
    assert fresh["lm_head.weight"].abs().max().item() <= 3 * 256 ** -0.5 + 1e-6


def test_titan_init_trains_through_the_cli(tiny_data, tmp_path):
    main(["train", "--out", str(tmp_path / "run"), "--data.path", str(tiny_data), "--preset", "cpu-smoke",
          "--model.init=titan", "--train.steps=6", "--train.eval_every=3", "--data.val_tokens=1024"])
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert math.isfinite(summary["val_loss"])
