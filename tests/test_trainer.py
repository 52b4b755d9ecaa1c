"""The two-phase trainer: baseline parity, token accounting, carried state, exact accumulation.

Run: .venv/bin/pytest tests/test_trainer.py
"""

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from superpose.data import TrainLoader, open_dataset
from superpose.errors import UserError
from superpose.core.model import build_model, model_config
from superpose.core.schedule import wsd_lr
from superpose.training import build_trainer, run_training
from superpose.training.optimizer import configure_optimizer

from conftest import tiny_config


def train(cfg, run_dir, logs=None):
    t = build_trainer(cfg, run_dir, open_dataset(cfg.data.path),
                      log=(logs.append if logs is not None else lambda m: None))
    t.train()
    return t


def records(run_dir, kind):
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["type"] == kind]


def test_baseline_is_bit_for_bit_plain_next_token_training(tiny_data, tmp_path):
    cfg = tiny_config(tiny_data, tst__ratio=0.0)
    t = train(cfg, tmp_path / "r0")
    # s = 1 with r > 0 is the same baseline.
    t1 = train(tiny_config(tiny_data, tst__bag_size=1, tst__ratio=0.5), tmp_path / "s1")
    # A plain next-token loop written here without any TST function.
    torch.manual_seed(cfg.train.seed)
    model = build_model(model_config(**t.cfg.model.to_dict()))  # the vocabulary resolved from the data
    opt = configure_optimizer(model, cfg)
    ds = open_dataset(tiny_data)
    loader = TrainLoader(ds.train, ds.train_docs, seed=cfg.train.seed, vocab_size=ds.vocab_size)
    losses = []
    for step in range(cfg.train.steps):
        for g in opt.param_groups:
            g["lr"] = wsd_lr(step, cfg.train.steps, cfg.optim.lr, cfg.optim.warmup_steps, cfg.optim.decay_frac)
        rows = torch.from_numpy(loader.next_rows(cfg.train.batch_size, cfg.data.seq_len))
        logits = model(rows[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), rows[:, 1:].flatten(), reduction="sum") / rows[:, 1:].numel()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert [r["loss"] for r in records(tmp_path / "r0", "train")] == losses
    assert [r["loss"] for r in records(tmp_path / "s1", "train")] == losses
    for name, p in model.state_dict().items():
        assert torch.equal(p, t.model.state_dict()[name]), name
        assert torch.equal(p, t1.model.state_dict()[name]), name


def test_tst_run_metrics_accounting_and_carried_state(tiny_data, tmp_path):
    cfg = tiny_config(tiny_data)  # 8 steps, r = 0.5, s = 4, B = 4, L = 16
    logs = []
    t = train(cfg, tmp_path / "run", logs)
    train_recs, eval_recs = records(tmp_path / "run", "train"), records(tmp_path / "run", "eval")
    assert [r["step"] for r in train_recs] == list(range(8))
    assert [r["phase"] for r in train_recs] == [1] * 4 + [2] * 4
    assert [r["bag_size"] for r in train_recs] == [4] * 4 + [1] * 4
    for key in ("loss", "lr", "grad_norm", "tokens_seen", "elapsed_s", "step_time_s", "epoch"):
        assert all(key in r for r in train_recs), key
    B, L = 4, 16
    assert [r["tokens_seen"] for r in train_recs] == [B * L * 4 * k for k in range(1, 5)] + \
        [B * L * 16 + B * L * k for k in range(1, 5)]
    # One WSD schedule over the whole run, blind to the switch.
    assert [r["lr"] for r in train_recs] == [wsd_lr(k, 8, 3e-3, 2, 0.25) for k in range(8)]
    # Validation next-token loss is measured in phase 1 too, with bits per byte.
    assert [(e["step"], e["phase"]) for e in eval_recs] == [(3, 1), (7, 2)]
    assert all(e["val_loss"] > 0 and 0 < e["val_bpb"] < 20 for e in eval_recs)
    # Optimizer state carried over: AdamW's step count ran through both phases uninterrupted.
    assert all(int(s["step"]) == 8 for s in t.optimizer.state.values())
    # Data position carried over: phase 2 continued where phase 1 stopped.
    assert t.loader.position == 4 * B * L * 4 + 4 * B * L and t.loader.epoch == 0
    assert train_recs[-1]["epoch"] == pytest.approx(t.loader.position / t.loader.tokens_per_epoch)
    assert any("switching to phase 2" in m for m in logs)
    # The final model is a plain Llama: its files know nothing about TST.
    run = tmp_path / "run"
    assert json.loads((run / "model.json").read_text()) == t.cfg.model.to_dict()
    weights = load_file(str(run / "model.safetensors"))
    assert set(weights) == set(t.model.state_dict())
    assert not any("tst" in k or "bag" in k for k in list(weights) + list(json.loads((run / "model.json").read_text())))
    assert json.loads((run / "config.json").read_text())["tst"]["bag_size"] == 4
    assert (run / "tokenizer.json").is_file()


def test_gradient_accumulation_is_exact(tiny_data, tmp_path):
    a = records(train(tiny_config(tiny_data), tmp_path / "a").run_dir, "train")
    b = records(train(tiny_config(tiny_data, train__grad_accum=2), tmp_path / "b").run_dir, "train")
    for x, y in zip(a, b):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-5), x["step"]


def test_same_seed_same_initial_weights_in_both_arms(tiny_data, tmp_path):
    ds = open_dataset(tiny_data)
    base = build_trainer(tiny_config(tiny_data, tst__ratio=0.0), tmp_path / "x", ds, log=lambda m: None)
    tst = build_trainer(tiny_config(tiny_data), tmp_path / "y", ds, log=lambda m: None)
    other = build_trainer(tiny_config(tiny_data, train__seed=1), tmp_path / "z", ds, log=lambda m: None)
    w = base.model.state_dict()
    assert all(torch.equal(w[k], v) for k, v in tst.model.state_dict().items())
    assert not torch.equal(w["embed_tokens.weight"], other.model.state_dict()["embed_tokens.weight"])


def naive_bag_loss(model, rows, s, weights):
    """The weighted multi-hot next-bag loss of one batch, written from the paper without any
    superpose TST function: position j reads raw tokens j*s .. j*s+s-1 (their embeddings
    averaged) and predicts the s tokens after them, slot i weighted g_i = 1/i ("power") or 1.
    rows: (B, s*L + 1) raw tokens."""
    B, T = rows.shape[0], rows.shape[1] - 1
    L = T // s
    E = model.embed_tokens.weight
    h = torch.stack([E[rows[:, j * s:(j + 1) * s]].mean(dim=1) for j in range(L)], dim=1)  # (B, L, D)
    logp = F.log_softmax(model(inputs_embeds=h).float(), dim=-1)  # (B, L, V)
    total, norm = 0.0, 0.0
    for j in range(L):
        for i in range(s):
            at = (j + 1) * s + i  # the raw token slot i of the next bag
            if at > T:  # past the row's one extra label token
                continue
            g = 1.0 / (i + 1) if weights == "power" else 1.0
            total = total - g * logp[:, j].gather(-1, rows[:, at:at + 1]).sum()
            norm += g * B
    return total / norm


@pytest.mark.parametrize("weights", ["uniform", "power"])
def test_phase1_loss_is_the_multi_hot_loss_computed_independently(tiny_data, tmp_path, weights):
    """A TST run (4 phase-1 steps with bags of 4, then 4 next-token steps) against a loop written
    here from the paper's definitions: every logged loss agrees to float32 rounding, so a wrong
    target slot, weight, normaliser or bag mean fails (each moves the loss by far more)."""
    cfg = tiny_config(tiny_data, tst__weights=weights)
    t = train(cfg, tmp_path / "run")
    got = [r["loss"] for r in records(tmp_path / "run", "train")]
    torch.manual_seed(cfg.train.seed)
    model = build_model(model_config(**t.cfg.model.to_dict()))
    opt = configure_optimizer(model, cfg)
    ds = open_dataset(tiny_data)
    loader = TrainLoader(ds.train, ds.train_docs, seed=cfg.train.seed, vocab_size=ds.vocab_size)
    want = []
    for step in range(cfg.train.steps):
        s = 4 if step < 4 else 1
        for g in opt.param_groups:
            g["lr"] = wsd_lr(step, cfg.train.steps, cfg.optim.lr, cfg.optim.warmup_steps, cfg.optim.decay_frac)
        rows = torch.from_numpy(loader.next_rows(cfg.train.batch_size, s * cfg.data.seq_len))
        loss = naive_bag_loss(model, rows, s, weights)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        opt.step()
        opt.zero_grad()
        want.append(loss.item())
    assert got == pytest.approx(want, rel=1e-5, abs=0)
    assert got[3] < got[0] - 0.05 and got[-1] < got[4]  # and each phase learns


def test_bf16_trains_the_float32_run_to_bf16_precision(tiny_data, tmp_path):
    """bf16 autocast computes the same function at lower precision: master weights stay float32,
    and every loss of a TST run with power-weighted bags stays within bf16's rounding of the
    float32 run's (a bf16 path that dropped the weights or the bag mean would be far off)."""
    fp32 = train(tiny_config(tiny_data, tst__weights="power"), tmp_path / "fp32")
    bf16 = train(tiny_config(tiny_data, tst__weights="power", train__dtype="bfloat16"), tmp_path / "bf16")
    assert bf16.model.embed_tokens.weight.dtype == torch.float32  # master weights stay fp32
    a, b = records(tmp_path / "fp32", "train"), records(tmp_path / "bf16", "train")
    assert [r["loss"] for r in b] == pytest.approx([r["loss"] for r in a], rel=2e-2)
    assert [r["loss"] for r in b] != [r["loss"] for r in a]  # bf16 did run: not bit-identical
    assert fp32.model.embed_tokens.weight.dtype == torch.float32


def test_warns_when_phase1_repeats_data(tiny_data, tmp_path):
    logs = []
    # 4 phase-1 steps of 256 rows x 16 x s=8 = 131,072 tokens: more than the ~100k-token train split.
    train(tiny_config(tiny_data, tst__bag_size=8, tst__ratio=0.5, train__steps=8, train__batch_size=256,
                      train__eval_every=0), tmp_path / "rep", logs)
    assert any("phase 1 alone reads" in m and "repeats data" in m for m in logs)


def test_warns_when_a_step_reads_one_document(tiny_data, tmp_path):
    """The tiny documents average ~60 tokens: a step of 1 x 16 tokens reads inside one, a step of
    64 x 16 mixes many (the warning issue 30's non-repeating corpus earned: 89% at 1,024 tokens)."""
    logs = []
    train(tiny_config(tiny_data, train__steps=1, train__batch_size=1, train__eval_every=0), tmp_path / "one", logs)
    warned = [m for m in logs if "documents longer than a step (16 tokens)" in m]
    assert len(warned) == 1 and "train.batch_size" in warned[0], logs
    logs.clear()
    train(tiny_config(tiny_data, train__steps=1, train__batch_size=64, train__eval_every=0), tmp_path / "many", logs)
    assert not any("documents longer than a step" in m for m in logs), logs


def test_user_errors(tiny_data, tmp_path):
    train(tiny_config(tiny_data, train__steps=1), tmp_path / "done")
    with pytest.raises(UserError, match="already holds a run"):
        run_training(tiny_config(tiny_data), tmp_path / "done")
    with pytest.raises(UserError, match="smaller than the tokenizer"):
        build_trainer(tiny_config(tiny_data, model__vocab_size=100), tmp_path / "v", open_dataset(tiny_data))
    with pytest.raises(UserError, match="does not exist"):
        run_training(tiny_config(tmp_path / "nowhere"), tmp_path / "nd")


def test_state_snapshot_continues_exactly_across_the_switch(tiny_data, tmp_path):
    """Stop at step 3 (phase 1), 4 (the switch) or 6 (phase 2), restore into a new trainer: the
    rest of the run is bit-identical to the uninterrupted one."""
    import copy

    straight = train(tiny_config(tiny_data), tmp_path / "straight")
    want = [r["loss"] for r in records(tmp_path / "straight", "train")]
    for stop in (3, 4, 6):
        a = build_trainer(tiny_config(tiny_data), tmp_path / f"a{stop}", open_dataset(tiny_data), log=lambda m: None)
        a.begin()
        while a.state.step < stop:
            a.step_once()
        snap = copy.deepcopy(a.state_dict())
        b = build_trainer(tiny_config(tiny_data), tmp_path / f"b{stop}", open_dataset(tiny_data), log=lambda m: None)
        b.load_state_dict(snap)
        b.train()
        assert [r["loss"] for r in records(tmp_path / f"b{stop}", "train")] == want[stop:]
        for name, p in straight.model.state_dict().items():
            assert torch.equal(p, b.model.state_dict()[name]), (stop, name)


def test_fused_chunked_head_trains_like_the_dense_head(tiny_data, tmp_path):
    a = records(train(tiny_config(tiny_data), tmp_path / "dense").run_dir, "train")
    b = records(train(tiny_config(tiny_data, train__loss_chunk_rows=7), tmp_path / "chunked").run_dir, "train")
    for x, y in zip(a, b):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-5), x["step"]
        assert x["grad_norm"] == pytest.approx(y["grad_norm"], rel=1e-4), x["step"]
