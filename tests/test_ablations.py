"""The paper's ablations as configuration (issue 13): input-only and output-only superposition,
MCEAlt, what happens at the switch, bag weights fitted to the corpus's mutual information, and a
bag-size curriculum. Each target/loss variant is checked against a direct loop (values and
gradients), each reduces to plain training at s = 1, and each resumes exactly.
"""

import json
import math
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from superpose.core.model import build_model
from superpose.core.schedule import Phase, build_phases, parse_stages
from superpose.core.tst_spec import TSTSpec
from superpose.core.superposition import (bag_targets, bag_weights, chunked_multi_hot_cross_entropy,
                                          count_valid_targets, mi_bag_weights, multi_hot_cross_entropy,
                                          next_window_targets)
from superpose.data import mutual_info, open_dataset
from superpose.training import build_trainer
from superpose.core.tst_step import model_loss

from conftest import tiny_config
from test_checkpoint import resume, start, superpose

IGN = -100


def quiet(msg):
    pass


def records(run_dir, kind="train"):
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["type"] == kind]


def config(data, **overrides):
    return tiny_config(data, train__threads=1, **overrides)


def train(cfg, run_dir, log=quiet):
    t = build_trainer(cfg, run_dir, open_dataset(cfg.data.path), log=log)
    t.train(progress=False)
    return t


# ----------------------------------------------------------------------------- targets

def test_output_and_input_targets_are_what_a_loop_says():
    B, L, s = 2, 6, 3
    y = torch.randint(0, 50, (B, L * s))
    # output-only: position t predicts tokens t+1 .. t+s, i.e. labels t .. t+s-1
    lab = y[:, :L]
    win = next_window_targets(lab, s)
    for b in range(B):
        for t in range(L):
            for i in range(s):
                assert win[b, t, i] == (lab[b, t + i] if t + i < L else IGN)
    assert torch.equal(bag_targets(lab, s, "output"), win)
    # input-only: bag j read raw tokens j*s .. j*s+s-1 and predicts token (j+1)*s = labels[j*s + s-1]
    first = bag_targets(y, s, "input")
    assert first.shape == (B, L, 1)
    for b in range(B):
        for j in range(L):
            assert first[b, j, 0] == y[b, j * s + s - 1]
    # s = 1: the next-token labels in every mode
    for mode in ("full", "input", "output"):
        assert torch.equal(bag_targets(y, 1, mode), y.unsqueeze(-1))


# ----------------------------------------------------------------------------- MCEAlt

def mce_alt_loop(logits, targets, weights):
    """-log sum_i g~_i p(y_i) over each position's valid slots, written one position at a time."""
    B, L, s = targets.shape
    g = bag_weights(weights, s)
    g = g * s / g.sum()
    logp = torch.log_softmax(logits.float(), -1)
    out = torch.zeros(B, L)
    for b in range(B):
        for j in range(L):
            mass = [g[i] * logp[b, j, targets[b, j, i]].exp() for i in range(s) if targets[b, j, i] != IGN]
            if mass:
                out[b, j] = -torch.log(torch.stack(mass).sum())
    return out


@pytest.mark.parametrize("weights", ["uniform", "power", torch.tensor([0.5, 2.0, 1.0, 0.25])])
def test_mce_alt_matches_a_direct_loop_in_values_and_gradients(weights):
    torch.manual_seed(0)
    B, L, V, s = 2, 5, 6, 4  # a 6-token vocabulary: bags hold duplicates
    logits = torch.randn(B, L, V, dtype=torch.float64).float()
    targets = bag_targets(torch.randint(0, V, (B, L * s)), s)  # the last position has one valid slot
    assert any(len(set(row.tolist())) < s for row in targets.reshape(-1, s)), "the test needs duplicates"
    want = mce_alt_loop(logits, targets, weights)  # (B, L)
    valid = (targets != IGN).any(-1)
    for reduction, ref in (("sum", want.sum()), ("mean", want.sum() / valid.sum())):
        z1 = logits.clone().requires_grad_()
        z2 = logits.clone().requires_grad_()
        got = multi_hot_cross_entropy(z1, targets, weights, reduction=reduction, loss="mce_alt")
        direct = mce_alt_loop(z2, targets, weights)
        direct = direct.sum() if reduction == "sum" else direct.sum() / valid.sum()
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
        g1, = torch.autograd.grad(got, z1)
        g2, = torch.autograd.grad(direct, z2)
        torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(multi_hot_cross_entropy(logits, targets, weights, reduction="none", loss="mce_alt"),
                               want, rtol=1e-5, atol=1e-6)
    assert count_valid_targets(targets, weights, loss="mce_alt") == valid.sum()
    # The head fused into the loss, a few rows at a time: the same loss and gradients.
    D = 8
    h = torch.randn(B, L, D, requires_grad=True)
    w = torch.randn(V, D, requires_grad=True)
    fused = chunked_multi_hot_cross_entropy(h, w, targets, weights, chunk_rows=3, loss="mce_alt")
    h2, w2 = h.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    plain = multi_hot_cross_entropy(h2 @ w2.T, targets, weights, reduction="sum", loss="mce_alt")
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-5)
    fused.backward()
    plain.backward()
    torch.testing.assert_close(h.grad, h2.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(w.grad, w2.grad, rtol=1e-4, atol=1e-6)


def test_mce_alt_counts_a_repeated_token_once_per_slot():
    z = torch.randn(1, 1, 5)
    p = torch.softmax(z, -1)[0, 0]
    bag = torch.tensor([[[2, 2, 4]]])
    got = multi_hot_cross_entropy(z, bag, reduction="sum", loss="mce_alt")
    torch.testing.assert_close(got, -torch.log(2 * p[2] + p[4]))
    # A bag of one token repeated: the mass can exceed 1, the loss go below 0, down to -log(s).
    confident = torch.full((1, 1, 5), -30.0)
    confident[0, 0, 3] = 30.0
    assert multi_hot_cross_entropy(confident, torch.full((1, 1, 3), 3), reduction="sum", loss="mce_alt") < -1.09


def test_with_one_slot_both_losses_are_plain_cross_entropy():
    z, y = torch.randn(3, 7, 11), torch.randint(0, 11, (3, 7, 1))
    ce = F.cross_entropy(z.reshape(-1, 11), y.reshape(-1), reduction="sum")
    for loss in ("mce", "mce_alt"):
        assert torch.equal(multi_hot_cross_entropy(z, y, reduction="sum", loss=loss), ce)


# ----------------------------------------------------------------------------- the modes, end to end

@pytest.mark.parametrize("mode", ["input", "output"])
def test_model_loss_of_each_mode_matches_a_direct_loop(mode):
    """Values and gradients of the trainer's loss against the method written out by hand."""
    cfg = tiny_config_model()
    torch.manual_seed(0)
    model = build_model(cfg)
    B, L, s, V = 2, 8, 4, cfg.vocab_size
    T = s * L if mode == "input" else L
    rows = torch.randint(0, V, (B, T + 1))
    got = model_loss(model, rows, Phase.of(s, mode), "power")
    g_got = torch.autograd.grad(got, [p for p in model.parameters()])
    # by hand
    x, y = rows[:, :-1], rows[:, 1:]
    total = torch.zeros(())
    if mode == "input":  # average each bag's embeddings, predict the token after the bag
        h = model.embed_tokens(x).view(B, L, s, -1).mean(2)
        logits = model(inputs_embeds=h)
        for b in range(B):
            for j in range(L):
                total = total + F.cross_entropy(logits[b, j], y[b, j * s + s - 1])
    else:  # ordinary input, predict the next s tokens with power weights, normalised to mean 1
        logits = model(x)
        g = torch.tensor([1 / (i + 1) for i in range(s)])
        g = g * s / g.sum()
        for b in range(B):
            for t in range(L):
                for i in range(s):
                    if t + i < L:
                        total = total + g[i] * F.cross_entropy(logits[b, t], y[b, t + i])
    torch.testing.assert_close(got, total, rtol=1e-5, atol=1e-4)
    g_want = torch.autograd.grad(total, [p for p in model.parameters()])
    for a, b in zip(g_got, g_want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def tiny_config_model():
    from superpose.core.llama import LlamaConfig

    return LlamaConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=32, vocab_size=40)


@pytest.mark.parametrize("overrides", [{"tst__mode": "input"}, {"tst__mode": "output", "tst__loss": "mce_alt"},
                                       {"tst__loss": "mce_alt", "tst__weights": "power"},
                                       {"tst__reset_optimizer": True, "tst__reinit": "both"}],
                         ids=["input", "output-alt", "alt-power", "switch"])
def test_at_s1_every_option_is_the_plain_baseline_bit_for_bit(tiny_data, tmp_path, overrides):
    base = train(config(tiny_data, tst__ratio=0.0), tmp_path / "base")
    other = train(config(tiny_data, tst__bag_size=1, **overrides), tmp_path / "s1")
    assert [r["loss"] for r in records(tmp_path / "s1")] == [r["loss"] for r in records(tmp_path / "base")]
    for name, p in base.model.state_dict().items():
        assert torch.equal(p, other.model.state_dict()[name]), name


def test_output_only_reads_no_extra_data_and_input_only_reads_bags(tiny_data, tmp_path):
    B, L = 4, 16
    out = records(train(config(tiny_data, tst__mode="output"), tmp_path / "out").run_dir)
    inp = records(train(config(tiny_data, tst__mode="input"), tmp_path / "in").run_dir)
    assert [r["tokens_seen"] for r in out] == [B * L * (k + 1) for k in range(8)]
    assert [r["tokens_seen"] for r in inp][:4] == [B * L * 4 * (k + 1) for k in range(4)]
    assert [r["phase"] for r in out] == [1] * 4 + [2] * 4


# ----------------------------------------------------------------------------- curriculum

def test_curriculum_stages_round_to_their_cumulative_share():
    assert parse_stages("8:0.1, 4:0.1,2:0.1") == [(8, 0.1), (4, 0.1), (2, 0.1)]
    phases = build_phases(100, 0.0, 1, stages=parse_stages("8:0.1,4:0.15,2:0.05"))
    assert [(p.index, p.bag_size, p.start, p.end) for p in phases] == \
        [(1, 8, 0, 10), (1, 4, 10, 25), (1, 2, 25, 30), (2, 1, 30, 100)]
    # a one-stage curriculum is two-phase TST
    assert TSTSpec(bag_size=4, ratio=0.3).phases(600) == TSTSpec(bag_size=1, ratio=0.0, schedule="4:0.3").phases(600)
    # FLOP-matched: every stage reads rows of s*L raw tokens into L positions
    assert [p.row_tokens(128) for p in phases] == [1024, 512, 256, 128]
    assert TSTSpec(bag_size=4, ratio=0.5, mode="output").phases(10)[0].row_tokens(128) == 128


@pytest.mark.parametrize("text,needle", [("8:0.5,4:0.6", "past 1"), ("8-0.1", "BAG:FRACTION"),
                                         ("1:0.2", ">= 2"), ("4:0", "(0, 1]"), ("4:x", "BAG:FRACTION")])
def test_bad_curricula_are_named(text, needle):
    with pytest.raises(ValueError, match=None) as e:
        parse_stages(text)
    assert needle in str(e.value)


@pytest.mark.parametrize("flags,needle", [
    (["--tst.schedule=8:0.5,4:0.6"], "past 1"),
    (["--tst.mode=input", "--tst.weights=power"], "tst.mode=input predicts one token"),
    (["--tst.mode=sideways"], "tst.mode: must be one of full, input, output"),
    (["--tst.loss=hinge"], "tst.loss: must be one of mce, mce_alt"),
    (["--tst.reinit=everything"], "tst.reinit: must be one of"),
])
def test_impossible_settings_are_one_line_and_exit_2(tmp_path, flags, needle):
    r = superpose("train", "--preset", "cpu-smoke", "--out", tmp_path / "run", *flags)
    assert r.returncode == 2, r.stderr
    assert needle in r.stderr and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not (tmp_path / "run").exists()


def resume_is_exact(cfg, root, stops):
    """Stop after each of `stops` steps with a checkpoint (and one more step that the resume must
    drop), resume from disk: the run is bit for bit the uninterrupted one."""
    straight = train(cfg, root / "straight")
    want = [r["loss"] for r in records(root / "straight")]
    for stop in stops:
        run = root / f"stop{stop}"
        start(cfg, run, stop)  # a checkpoint after `stop` steps, then one step the resume drops
        resume(run)
        assert [r["loss"] for r in records(run)] == want, stop
        got = load_file(str(run / "model.safetensors"))
        for name, p in straight.model.state_dict().items():
            assert torch.equal(p, got[name]), (stop, name)
    return straight


def test_curriculum_carries_everything_and_resumes_exactly_at_every_boundary(tiny_data, tmp_path):
    cfg = config(tiny_data, tst__schedule="4:0.25,2:0.25", checkpoint__keep=0)
    logs = []
    t = train(cfg, tmp_path / "logged", log=logs.append)
    recs = records(tmp_path / "logged")
    assert [r["bag_size"] for r in recs] == [4, 4, 2, 2, 1, 1, 1, 1]
    assert [r["phase"] for r in recs] == [1, 1, 1, 1, 2, 2, 2, 2]
    assert sum("switching to phase 1 (superposition s=2" in m for m in logs) == 1
    # The data position carries through each switch: tokens read add up stage by stage.
    B, L = 4, 16
    assert recs[-1]["tokens_seen"] == B * L * (4 * 2 + 2 * 2 + 1 * 4) == t.state.tokens_seen
    resume_is_exact(cfg, tmp_path, stops=[2, 4])


# ----------------------------------------------------------------------------- the switch

def test_switch_reset_and_reinit_do_what_they_say_and_resume_exactly(tiny_data, tmp_path):
    cfg = config(tiny_data, tst__reset_optimizer=True, tst__reinit="both")
    t = build_trainer(cfg, tmp_path / "look", open_dataset(tiny_data), log=quiet)
    t.begin(progress=False)
    while t.state.step < 4:  # phase 1 ends after step 3
        t.step_once()
    emb_before = t.model.embed_tokens.weight.detach().clone()
    block_before = t.model.layers[0].mlp.up_proj.weight.detach().clone()
    fresh = t.model.fresh_weights(["embed_tokens.weight", "lm_head.weight"],
                                  torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + 4))
    logs = []
    t.log = logs.append
    done = t.at_switch()
    assert len(done) == 2 and not t.optimizer.state  # everything reset, recreated by the next step
    assert torch.equal(t.model.embed_tokens.weight, fresh["embed_tokens.weight"])
    assert torch.equal(t.model.lm_head.weight, fresh["lm_head.weight"])
    assert not torch.equal(emb_before, t.model.embed_tokens.weight)
    assert torch.equal(block_before, t.model.layers[0].mlp.up_proj.weight)  # the body is kept
    assert abs(float(fresh["embed_tokens.weight"].std()) - cfg.model.init_std) < 0.002
    t.metrics.close()
    # In a run: the log says it, metrics record it, and the optimizer starts counting again.
    logs = []
    run = train(cfg, tmp_path / "run", log=logs.append)
    assert any("re-initialised embed_tokens.weight, lm_head.weight" in m and "optimizer state reset" in m
               for m in logs)
    assert records(tmp_path / "run", "switch") == [{"type": "switch", "step": 4, "phase": 2, "bag_size": 1,
                                                    "next_token": True, "reinit": "both", "reset_optimizer": True}]
    assert all(int(s["step"]) == 4 for s in run.optimizer.state.values())  # 8 steps, 4 since the reset
    resume_is_exact(cfg, tmp_path, stops=[3, 4, 5])


def test_reinit_of_one_side_keeps_the_other_and_its_optimizer_state(tiny_data, tmp_path):
    t = build_trainer(config(tiny_data, tst__reinit="head"), tmp_path / "r", open_dataset(tiny_data), log=quiet)
    t.begin(progress=False)
    while t.state.step < 4:
        t.step_once()
    emb = t.model.embed_tokens.weight.detach().clone()
    t.at_switch()
    assert torch.equal(emb, t.model.embed_tokens.weight)
    assert t.model.lm_head.weight not in t.optimizer.state and t.model.embed_tokens.weight in t.optimizer.state
    t.metrics.close()


# ----------------------------------------------------------------------------- mutual information

def test_mutual_information_of_a_markov_chain_is_the_analytic_value():
    """A binary symmetric Markov chain flipping with probability p: tokens d apart differ with
    probability q_d = (1 - (1-2p)^d) / 2 and share MI(d) = log 2 - H(q_d) nats."""
    rng = np.random.default_rng(0)
    p, n = 0.1, 400_000
    flips = rng.random(n) < p
    x = (np.cumsum(flips) % 2).astype(np.int64)
    for d in (1, 2, 4, 8):
        q = (1 - (1 - 2 * p) ** d) / 2
        want = math.log(2) + q * math.log(q) + (1 - q) * math.log(1 - q)
        assert abs(mutual_info.pair_mutual_information([x], d, 2) - want) < 3e-3, d
    # independent tokens over a larger vocabulary: the corrected estimate is near 0
    iid = rng.integers(0, 64, 400_000)
    assert abs(mutual_info.pair_mutual_information([iid], 3, 64)) < 2e-3


def test_decay_fit_recovers_its_parameters_and_gives_weights():
    d = np.arange(1, 17)
    fit = mutual_info.fit_decay(d, 0.4 + 2.0 * d ** -1.2)
    assert abs(fit["c0"] - 0.4) < 1e-4 and abs(fit["a"] - 2.0) < 1e-4 and abs(fit["k"] + 1.2) < 1e-4
    w = mi_bag_weights(fit, 8)
    torch.testing.assert_close(w / w[0], torch.arange(1, 9, dtype=torch.float32) ** -1.2, rtol=1e-3, atol=0)
    # k = -1 is the power law
    torch.testing.assert_close(mi_bag_weights({"a": 3.0, "k": -1.0}, 4) / 3.0, bag_weights("power", 4))
    with pytest.raises(ValueError, match="does not decay"):
        mi_bag_weights({"a": -1.0, "k": -1.0}, 4)


def test_prepare_and_the_mi_verb_store_the_fit_and_runs_keep_their_copy(tiny_data, tmp_path):
    stored = mutual_info.load(tiny_data)  # prepare measured it
    assert stored is not None and stored["distances"] == list(range(1, 17))
    assert stored["fit"]["k"] < 0 and stored["fit"]["a"] > 0 and (tiny_data / "mi.png").is_file()
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    (data / "mi.json").unlink()
    r = superpose("mi", "--data", data, "--max-distance", "8")
    assert r.returncode == 0, r.stderr
    assert json.loads((data / "mi.json").read_text())["distances"] == list(range(1, 9))
    bad = superpose("mi", "--data", tmp_path / "nowhere")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    # A run with tst.weights=mi copies the fit it uses; a resume reads that copy, not the data's.
    cfg = config(data, tst__weights="mi", checkpoint__every=4, checkpoint__keep=0)
    t = build_trainer(cfg, tmp_path / "run", open_dataset(data), log=quiet)
    want = mi_bag_weights(mutual_info.load(data)["fit"], 4)
    torch.testing.assert_close(t.bag_weights(t.schedule.phase(0)), want)
    t.train(progress=False)
    assert json.loads((tmp_path / "run" / "mi.json").read_text())["fit"] == mutual_info.load(data)["fit"]
    (data / "mi.json").write_text(json.dumps({"fit": {"c0": 0, "a": 1, "k": -3.0}}))
    again = build_trainer(cfg, tmp_path / "run", open_dataset(data), log=quiet)
    torch.testing.assert_close(again.bag_weights(again.schedule.phase(0)), want)
    # A fit that does not decay is refused when the run is built, in one line.
    (data / "mi.json").write_text(json.dumps({"fit": {"c0": 0, "a": -1, "k": -1.0}}))
    r = superpose("train", "--preset", "cpu-smoke", "--out", tmp_path / "bad", f"--data.path={data}",
                  "--tst.weights=mi")
    assert r.returncode == 2 and "does not decay" in r.stderr and len(r.stderr.strip().splitlines()) == 1


# ----------------------------------------------------------------------------- Hugging Face TSTTrainer

def test_hf_superposition_loss_in_each_mode_matches_a_direct_loop():
    from test_hf import small_hf_models, V, L

    from superpose.interop.hf_trainer import superposition_loss

    model = small_hf_models()["llama"].eval()
    s = 3
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        rows = torch.randint(0, V, (2, L + 1), generator=gen)  # output-only: ordinary rows
        logits = model(rows[:, :-1]).logits
        y = rows[:, 1:]
        terms = [F.cross_entropy(logits[b, t], y[b, t + i]) for b in range(2) for t in range(L) for i in range(s)
                 if t + i < L]
        got = superposition_loss(model, rows, s, reduction="sum", mode="output")
        torch.testing.assert_close(got, torch.stack(terms).sum(), rtol=1e-5, atol=1e-4)
        rows = torch.randint(0, V, (2, s * L + 1), generator=gen)  # input-only: bagged rows, one target
        h = model.get_input_embeddings()(rows[:, :-1]).view(2, L, s, -1).mean(2)
        logits = model(inputs_embeds=h, position_ids=torch.arange(L).expand(2, L)).logits
        want = F.cross_entropy(logits.reshape(-1, V), rows[:, 1:].view(2, L, s)[..., -1].reshape(-1))
        torch.testing.assert_close(superposition_loss(model, rows, s, mode="input"), want, rtol=1e-5, atol=1e-6)


def test_hf_trainer_runs_a_curriculum_with_mce_alt_and_the_switch_options(tmp_path):
    """8 steps: bags of 3 for 2 steps, of 2 for 2, then next-token; MCEAlt with power weights; the
    optimizer reset and the embeddings re-drawn at step 4. A hand-written loop over the same rows
    ends with the same weights."""
    import copy

    import transformers
    from test_hf import small_hf_models, V, L

    from superpose.interop.hf_trainer import TokenRows, TSTTrainer, next_token_loss, superposition_loss

    model = small_hf_models()["llama"]
    start = copy.deepcopy(model)
    tokens = torch.randint(0, V, (4000,), generator=torch.Generator().manual_seed(3))
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=8, per_device_train_batch_size=2, learning_rate=1e-2,
        lr_scheduler_type="constant", weight_decay=0.0, max_grad_norm=1.0, logging_steps=1, report_to=[],
        save_strategy="no", use_cpu=True, seed=0, disable_tqdm=True)
    tst = TSTSpec(schedule="3:0.25,2:0.25", loss="mce_alt", weights="power", reset_optimizer=True, reinit="embeddings")
    trainer = TSTTrainer(model=model, args=args, train_tokens=tokens, seq_len=L, tst=tst)
    trainer.train()
    assert [h["bag_size"] for h in trainer.state.log_history if "loss" in h] == [3, 3, 2, 2, 1, 1, 1, 1]
    assert all(int(st["step"]) == 4 for st in trainer.optimizer.state_dict()["state"].values())

    opt = torch.optim.AdamW(start.parameters(), lr=1e-2, weight_decay=0.0)
    rows = iter(TokenRows(tokens, L, stages=[(4, 3), (4, 2)]))
    start.train()
    for step in range(8):
        if step == 4:
            opt.state.clear()
            gen = torch.Generator().manual_seed(4)
            with torch.no_grad():
                emb = start.get_input_embeddings().weight
                emb.copy_(torch.randn(emb.shape, generator=gen) * start.config.initializer_range)
        batch = torch.stack([next(rows)["input_ids"] for _ in range(2)])
        s = [3, 3, 2, 2][step] if step < 4 else 1
        loss = superposition_loss(start, batch, s, "power", loss="mce_alt") if s > 1 else next_token_loss(start, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(start.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
    # A fresh AdamW's first update is about lr * sign(gradient) whatever the gradient's size, so
    # float-level differences in the gradients (the Trainer's fused vs this loop's ops) show up
    # at 1e-5 after the reset instead of 1e-7.
    for (name, a), b in zip(model.state_dict().items(), start.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4, msg=name)


def test_hf_trainer_refuses_what_superpose_refuses(tmp_path):
    import transformers
    from test_hf import small_hf_models, V, L

    from superpose.errors import UserError
    from superpose.interop.hf_trainer import TSTTrainer

    args = transformers.TrainingArguments(output_dir=str(tmp_path), max_steps=4, report_to=[], use_cpu=True)
    ok = dict(train_tokens=torch.arange(2000) % V, seq_len=L)
    for extra, needle in (({"schedule": "4:0.7,2:0.7"}, "past 1"), ({"mode": "input", "weights": "power"},
                                                                     "predicts one token"),
                          ({"reinit": "all"}, "tst.reinit")):
        with pytest.raises(UserError, match=needle):
            TSTTrainer(model=small_hf_models()["llama"], args=args, **ok, tst=TSTSpec(**extra))


# ----------------------------------------------------------------------------- data parallel

@pytest.fixture(scope="module")
def parallel_runs(tiny_data, tmp_path_factory):
    """Two ablation configs as 2-process torchrun jobs (FSDP2 and DDP) and as one process."""
    from test_distributed import config as dist_config, finish, torchrun

    root = tmp_path_factory.mktemp("ablations-dist")
    cfgs = {"fsdp": dist_config(tiny_data, tst__schedule="4:0.25,2:0.25", tst__loss="mce_alt", tst__weights="power",
                                tst__reinit="both", tst__reset_optimizer=True),
            "ddp": dist_config(tiny_data, tst__mode="output", tst__weights="mi")}
    jobs = {name: torchrun(root / name, cfg, f"--parallel.mode={name}") for name, cfg in cfgs.items()}
    try:
        for name, cfg in cfgs.items():
            build_trainer(cfg, root / f"single-{name}", open_dataset(tiny_data), log=quiet).train(progress=False)
    finally:
        done = {name: finish(proc) for name, proc in jobs.items()}
    for name, (rc, out) in done.items():
        assert rc == 0, out[-3000:]
    return root


@pytest.mark.parametrize("name", ["fsdp", "ddp"])
def test_ablation_options_train_the_single_process_model_under_data_parallelism(parallel_runs, name):
    from test_distributed import REL, max_rel

    want, got = records(parallel_runs / f"single-{name}"), records(parallel_runs / name)
    assert [r["bag_size"] for r in got] == [r["bag_size"] for r in want]
    assert [r["tokens_seen"] for r in got] == [r["tokens_seen"] for r in want]
    # after a reset AdamW's first update is ~lr * sign(g): float-level differences grow to ~1e-4
    assert max_rel([r["loss"] for r in want], [r["loss"] for r in got]) < (1e-4 if name == "fsdp" else REL)
    assert records(parallel_runs / name, "switch") == records(parallel_runs / f"single-{name}", "switch")
    w = load_file(str(parallel_runs / f"single-{name}" / "model.safetensors"))
    v = load_file(str(parallel_runs / name / "model.safetensors"))
    for key in w:
        torch.testing.assert_close(v[key], w[key], rtol=1e-3, atol=1e-4, msg=key)


def test_compare_measures_an_ablation_arm_against_a_plain_baseline(tiny_data, tmp_path):
    from superpose.experiments.compare import compare

    cfg = config(tiny_data, tst__schedule="4:0.25,2:0.25", tst__mode="output", tst__reinit="head")
    rep = compare(cfg, tmp_path / "cmp", seeds=[0], factors=(1.0,), log=quiet)
    r = json.loads((tmp_path / "cmp" / "seed-0" / "result.json").read_text())["by_steps"]["8"]
    assert r["tst"]["switch_step"] == 4 and r["tst"]["tokens_seen"] == 8 * 4 * 16  # output-only: no extra data
    base = records(tmp_path / "cmp" / "seed-0" / "baseline-8")
    assert {x["bag_size"] for x in base} == {1} and not records(tmp_path / "cmp" / "seed-0" / "baseline-8", "switch")
    assert "curriculum 4:0.25,2:0.25, mode=output, reinit=head" in (tmp_path / "cmp" / "report.md").read_text()
    assert rep["config"]["tst"]["schedule"] == "4:0.25,2:0.25"


def test_bag_size_or_ratio_beside_a_curriculum_is_said_to_be_ignored(tiny_data):
    from superpose.config import ignored_settings

    cfg = config(tiny_data, tst__schedule="4:0.5")
    warnings = ignored_settings(cfg, ["--tst.schedule=4:0.5", "--tst.bag_size=8", "--tst.ratio", "0.2"])
    assert len(warnings) == 2 and all("tst.schedule='4:0.5' sets the bag sizes" in w for w in warnings)
    assert ignored_settings(config(tiny_data), ["--tst.bag_size=8"]) == []


def test_sweep_refuses_a_curriculum_it_would_ignore(tiny_data, tmp_path):
    from superpose.errors import UserError
    from superpose.experiments.sweep import sweep

    with pytest.raises(UserError, match="tst.schedule"):
        sweep(config(tiny_data, tst__schedule="4:0.5"), tmp_path / "s", [2], [0.5], [0], log=quiet)


@pytest.mark.parametrize("overrides", [{"tst__mode": "output", "tst__loss": "mce_alt", "tst__weights": "mi"},
                                       {"tst__mode": "input"}], ids=["output-alt-mi", "input"])
def test_modes_and_losses_resume_exactly(tiny_data, tmp_path, overrides):
    resume_is_exact(config(tiny_data, checkpoint__keep=0, **overrides), tmp_path, stops=[3, 5])
