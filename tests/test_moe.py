"""The Qwen3-MoE model option (core/moe.py), trained with TST, against references and transformers.

- Routing, top-k, the expert mixture and the load-balancing loss equal a direct per-token loop
  (values and gradients), and the aux loss equals transformers' `load_balancing_loss_func`.
- The grouped-GEMM dispatch equals the per-expert loop (forward; torch 2.13's CPU backward of
  `torch._grouped_mm` fails on an empty expert, so training on CPU always takes the loop).
- `superpose export --hf` of a trained MoE run loads as `Qwen3MoeForCausalLM` with the same logits
  (max |diff| <= 1e-5 in float32), dense layers included; `--init-from-hf` reads it back exactly;
  superpose's training loss (with the aux term) equals `superpose.interop.hf_trainer.superposition_loss` on the
  exported model in both phases, and `TSTTrainer` trains a transformers MoE across the switch.
- Training logs the aux loss and the expert load in both phases, warns on a collapse; resume is
  bit for bit across the switch; generate and eval work; bad MoE configs are one line, exit 2.

Run: .venv/bin/pytest tests/test_moe.py
"""

import json
import os

import pytest
import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach a hub

from superpose import cli  # noqa: E402
from superpose.inference.load import load_model  # noqa: E402
from superpose.presets import resolve  # noqa: E402
from superpose.core import moe  # noqa: E402
from superpose.core.model import build_model  # noqa: E402
from superpose.core.qwen3_moe import Qwen3MoeConfig  # noqa: E402
from superpose.data import open_dataset  # noqa: E402
from superpose.errors import UserError  # noqa: E402
from superpose.inference.generate import generate_ids  # noqa: E402
from superpose.training import build_trainer, run_training  # noqa: E402
from superpose.training.resume import resume_config  # noqa: E402
from superpose.core.schedule import Phase  # noqa: E402
from superpose.core.tst_spec import TSTSpec  # noqa: E402
from superpose.core.tst_step import model_loss  # noqa: E402

from conftest import random_weights, tiny_config  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

MOE = dict(model__arch="qwen3_moe", model__n_experts=4, model__top_k=2, model__moe_ffn_dim=24)


def quiet(_):
    pass


def moe_config(data, **overrides):
    return tiny_config(data, **{**MOE, "train__threads": 1, **overrides})


def records(run_dir, kind="train"):
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["type"] == kind]


def small_moe(**fields) -> Qwen3MoeConfig:
    base = dict(vocab_size=64, dim=32, n_layers=3, n_heads=4, n_kv_heads=2, n_experts=5, top_k=2,
                moe_ffn_dim=16, ffn_dim=40, norm_eps=1e-6)
    return Qwen3MoeConfig(**{**base, **fields})


# ----------------------------------------------------------------------------- the math against a loop

def reference_moe(x, router, gate_up, down, top_k, norm_topk_prob):
    """One token at a time: softmax of the router logits, its top-k experts, their SwiGLU outputs
    mixed by the (renormalised) probabilities; and the counts and probability sums of the aux loss."""
    E, F2, _ = gate_up.shape
    Fe = F2 // 2
    outs, counts, prob_sums = [], torch.zeros(E, dtype=x.dtype), torch.zeros(E, dtype=x.dtype)
    for n in range(x.shape[0]):
        p = torch.softmax(router @ x[n], dim=-1)  # (E,)
        prob_sums = prob_sums + p
        chosen = sorted(range(E), key=lambda e: -float(p[e].detach()))[:top_k]
        w = torch.stack([p[e] for e in chosen])
        if norm_topk_prob:
            w = w / w.sum()
        y = 0
        for wi, e in zip(w, chosen):
            counts[e] += 1
            h = F.silu(gate_up[e, :Fe] @ x[n]) * (gate_up[e, Fe:] @ x[n])
            y = y + wi * (down[e] @ h)
        outs.append(y)
    return torch.stack(outs), counts, prob_sums


@pytest.mark.parametrize("norm_topk_prob", [True, False])
def test_moe_layer_equals_a_per_token_loop_in_values_and_gradients(norm_topk_prob):
    cfg = small_moe(norm_topk_prob=norm_topk_prob).resolve()
    layer = random_weights(moe.SparseMoE(cfg), std=0.5)
    x = torch.randn(2, 7, cfg.dim, generator=torch.Generator().manual_seed(3), requires_grad=True)
    out, counts, prob_sums = layer(x)
    # The reference runs in float64, so the comparison sees only float32's rounding in ours.
    x_ref = x.detach().double().requires_grad_()
    ref_params = [p.detach().double().requires_grad_() for p in (layer.gate.weight, layer.experts.gate_up_proj,
                                                               layer.experts.down_proj)]
    ref, ref_counts, ref_probs = reference_moe(x_ref.view(-1, cfg.dim), *ref_params, cfg.top_k, norm_topk_prob)
    torch.testing.assert_close(out.view(-1, cfg.dim).double(), ref, rtol=1e-5, atol=1e-5)
    assert torch.equal(counts.double(), ref_counts)
    torch.testing.assert_close(prob_sums.double(), ref_probs, rtol=1e-5, atol=1e-6)
    # The aux loss (one layer here) and the layer output, through their gradients.
    aux = moe.load_balancing_loss(counts[None], prob_sums[None], 14)
    ref_aux = moe.load_balancing_loss(ref_counts[None], ref_probs[None], 14)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(4))
    ((out * g).sum() + 3 * aux).backward()
    ((ref * g.view(-1, cfg.dim)).sum() + 3 * ref_aux).backward()
    params = (layer.gate.weight, layer.experts.gate_up_proj, layer.experts.down_proj)
    for ours, r in zip((x, *params), (x_ref, *ref_params)):
        assert ours.grad.abs().sum() > 0
        torch.testing.assert_close(ours.grad.double(), r.grad, rtol=1e-4, atol=1e-5 * r.grad.abs().max().item())


def test_aux_loss_is_transformers_load_balancing_loss_and_k_when_uniform():
    hf = pytest.importorskip("transformers.models.qwen3_moe.modeling_qwen3_moe")
    E, k, N, M = 6, 2, 20, 3
    logits = [torch.randn(N, E, generator=torch.Generator().manual_seed(i), requires_grad=True) for i in range(M)]
    theirs = hf.load_balancing_loss_func(tuple(logits), E, k)
    probs = [torch.softmax(z, dim=-1) for z in logits]
    counts = torch.stack([torch.bincount(p.topk(k, dim=-1).indices.flatten(), minlength=E).float() for p in probs])
    ours = moe.load_balancing_loss(counts, torch.stack([p.sum(0) for p in probs]), N)
    torch.testing.assert_close(ours, theirs)
    g_ours = torch.autograd.grad(ours, logits)
    g_theirs = torch.autograd.grad(hf.load_balancing_loss_func(tuple(logits), E, k), logits)
    for a, b in zip(g_ours, g_theirs):
        torch.testing.assert_close(a, b)
    # A router that spreads positions evenly costs exactly k.
    even = torch.full((1, E), N * k / E)
    assert moe.load_balancing_loss(even, torch.full((1, E), N / E), N).item() == pytest.approx(k)


def test_grouped_gemm_dispatch_equals_the_expert_loop(monkeypatch):
    """On CPU in float32 (its forward works there); on CUDA the same call runs in bfloat16."""
    if not hasattr(torch, "_grouped_mm"):
        pytest.skip("this torch has no torch._grouped_mm")
    g = torch.Generator().manual_seed(0)
    counts = torch.tensor([3, 1, 4, 2])  # every expert has rows: the CPU kernel's forward handles that
    x, w = torch.randn(10, 8, generator=g), torch.randn(4, 6, 8, generator=g)
    torch.testing.assert_close(moe.grouped_linear(x, w, counts, torch.float32), moe.grouped_linear(x, w, counts, None))
    cfg = small_moe(n_experts=3, top_k=3).resolve()  # top_k = E: every expert gets every token
    layer = random_weights(moe.Experts(cfg))
    xs = torch.randn(5, cfg.dim, generator=g)
    top_w, top_i = torch.rand(5, 3, generator=g), torch.stack([torch.randperm(3, generator=g) for _ in range(5)])
    loop, counts = layer(xs, top_w, top_i)
    assert counts.tolist() == [5, 5, 5]
    monkeypatch.setattr(moe, "grouped_mm_dtype", lambda x, *w: torch.float32)
    torch.testing.assert_close(layer(xs, top_w, top_i)[0], loop)


def test_dense_and_sparse_layers_follow_qwen3s_rule():
    cfg = small_moe(n_layers=4, decoder_sparse_step=2, mlp_only_layers=[3]).resolve()
    model = build_model(cfg)
    assert [b.sparse for b in model.layers] == [False, True, False, False]
    dense = sum(p.numel() for p in model.layers[0].mlp.parameters())
    assert dense == 3 * cfg.dim * cfg.ffn_dim
    per_expert = 3 * cfg.dim * cfg.moe_ffn_dim
    assert model.num_params() - model.num_active_params() == (cfg.n_experts - cfg.top_k) * per_expert
    # QK-norm in every layer, a router and stacked experts in the sparse one.
    assert all(b.self_attn.q_norm.weight.shape == (cfg.head_dim,) for b in model.layers)
    assert model.layers[1].mlp.experts.gate_up_proj.shape == (cfg.n_experts, 2 * cfg.moe_ffn_dim, cfg.dim)


# ----------------------------------------------------------------------------- transformers

@pytest.fixture(scope="module")
def moe_run(tiny_data, tmp_path_factory):
    """A finished 8-step MoE TST run (switch at step 4), layer 0 dense, checkpoints every 2 steps."""
    run = tmp_path_factory.mktemp("moe") / "run"
    cfg = moe_config(tiny_data, model__n_layers=3, model__mlp_only_layers=[0], checkpoint__every=2,
                     checkpoint__keep=0)
    logs = []
    build_trainer(cfg, run, open_dataset(tiny_data), log=logs.append).train(progress=False)
    return run, logs


@pytest.fixture(scope="module")
def exported(moe_run, tmp_path_factory):
    hf_dir = tmp_path_factory.mktemp("hf") / "moe"
    assert cli.main(["export", str(moe_run[0]), "--hf", str(hf_dir)]) == 0
    return hf_dir


def write_hf(model, out):
    """The folder `superpose export --hf` writes, from a model in memory (weights and config.json)."""
    from safetensors.torch import save_file

    from superpose.interop.hf_llama import hf_config, hf_state

    out.mkdir()
    save_file({k: v.contiguous() for k, v in hf_state(model).items()}, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps(hf_config(model.config, 0, "float32")))
    return out


def logits_diff(model, hf_dir):
    transformers = pytest.importorskip("transformers")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    x = torch.randint(0, model.config.vocab_size, (3, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return (model(x) - theirs(x).logits).abs().max().item(), theirs


def test_export_loads_as_qwen3_moe_with_the_same_logits(moe_run, exported, tmp_path):
    diff, theirs = logits_diff(load_model(moe_run[0]), exported)
    assert type(theirs).__name__ == "Qwen3MoeForCausalLM"
    assert theirs.config.num_experts == 4 and theirs.config.mlp_only_layers == [0]
    assert diff <= 1e-5, diff
    # Large random weights (norms and QK-norms too), dense layer and sparse step, without renormalised
    # top-k: a misplaced or transposed tensor cannot hide.
    for i, fields in enumerate([dict(), dict(norm_topk_prob=False, decoder_sparse_step=2, n_layers=4)]):
        model = random_weights(build_model(small_moe(**fields)), seed=i).eval()
        diff, _ = logits_diff(model, write_hf(model, tmp_path / f"m{i}"))
        assert diff <= 1e-5, (fields, diff)


def test_init_from_hf_reads_the_moe_folder_back(moe_run, exported, tiny_data, tmp_path):
    from superpose.interop.hf_llama import config_from_hf, read_hf_config

    cfg = read_hf_config(exported)
    assert type(cfg) is Qwen3MoeConfig and cfg == load_model(moe_run[0]).config
    start = config_from_hf(tiny_config(tiny_data), exported, [])
    t = build_trainer(start, tmp_path / "r", open_dataset(tiny_data), log=quiet, init_from_hf=exported)
    want = load_model(moe_run[0]).state_dict()
    assert all(torch.equal(t.model.state_dict()[k], v) for k, v in want.items())
    # A folder missing an expert is refused in one line.
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    broken.mkdir()
    for f in exported.iterdir():  # as a folder from elsewhere: without superpose's checksum manifest
        if f.name != "superpose_checksums.json":
            (broken / f.name).write_bytes(f.read_bytes())
    state = load_file(str(broken / "model.safetensors"))
    del state["model.layers.1.mlp.experts.3.up_proj.weight"]
    save_file(state, str(broken / "model.safetensors"))
    with pytest.raises(UserError, match="layer 1 has up_proj for 3 experts, its config.json says 4"):
        build_trainer(start, tmp_path / "r2", open_dataset(tiny_data), log=quiet, init_from_hf=broken)


@pytest.mark.parametrize("bag_size", [4, 1])
def test_training_loss_equals_hf_superposition_loss_with_the_router_aux_loss(moe_run, exported, bag_size):
    transformers = pytest.importorskip("transformers")
    from superpose.core.superposition import count_valid_targets, next_bag_targets
    from superpose.interop.hf_trainer import next_token_loss, superposition_loss

    ours = load_model(moe_run[0])
    theirs = transformers.AutoModelForCausalLM.from_pretrained(exported).eval()
    rows = torch.randint(0, ours.config.vocab_size, (2, bag_size * 8 + 1), generator=torch.Generator().manual_seed(2))
    n = count_valid_targets(next_bag_targets(rows[:, 1:], bag_size))
    log = []
    with torch.no_grad():
        mine = model_loss(ours, rows, Phase.of(bag_size), router_log=log) / n
        hf = superposition_loss(theirs, rows, bag_size, reduction="sum") / n
        plain = superposition_loss(theirs, rows, bag_size, reduction="none").sum() / n  # no aux term
        if bag_size == 1:
            torch.testing.assert_close(next_token_loss(theirs, rows), hf, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(mine, hf, rtol=1e-5, atol=1e-6)
    aux = log[0][0] / n
    assert aux > 0 and log[0][1].shape == (2, 4)  # (MoE layers, experts)
    torch.testing.assert_close(hf - plain, 0.001 * aux, rtol=1e-4, atol=1e-8)


def test_tst_trainer_trains_a_transformers_moe_across_the_switch(tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from superpose.interop.hf_trainer import TSTTrainer
    from superpose.interop.hf_trainer import router_aux_coef

    from superpose.core.superposition import multi_hot_cross_entropy, next_bag_targets

    config = transformers.Qwen3MoeConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, num_experts=4,
                                         num_experts_per_tok=2, moe_intermediate_size=16, router_aux_loss_coef=0.5)
    torch.manual_seed(0)
    model = transformers.Qwen3MoeForCausalLM(config).train()
    assert router_aux_coef(model) == 0.5
    args = transformers.TrainingArguments(output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=2,
                                          learning_rate=1e-3, report_to=[], logging_steps=1, use_cpu=True,
                                          save_strategy="no", disable_tqdm=True)
    tokens = torch.randint(0, 64, (4000,), generator=torch.Generator().manual_seed(0)).numpy()
    trainer = TSTTrainer(model=model, args=args, train_tokens=tokens, seq_len=8, tst=TSTSpec(bag_size=4, ratio=0.5))
    # A phase-1 step optimises the multi-hot loss plus 0.5 x the router's aux loss, as transformers computes it.
    rows = torch.as_tensor(tokens[:33])[None]  # (1, s*L + 1)
    with torch.no_grad():
        with_aux = trainer.compute_loss(model, {"input_ids": rows})
        h = model.get_input_embeddings()(rows[:, :-1]).view(1, 8, 4, 32).mean(2)  # (1, L, D) bag means
        out = model(inputs_embeds=h, position_ids=torch.arange(8)[None], output_router_logits=True, use_cache=False)
        mce = multi_hot_cross_entropy(out.logits, next_bag_targets(rows[:, 1:], 4))
    assert out.aux_loss.item() > 0
    torch.testing.assert_close(with_aux, mce + 0.5 * out.aux_loss, rtol=1e-5, atol=1e-6)
    trainer.train()
    losses = [h for h in trainer.state.log_history if "loss" in h]
    assert [h["bag_size"] for h in losses] == [4, 4, 1, 1]
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in losses)


# ----------------------------------------------------------------------------- training

def test_metrics_carry_aux_loss_and_expert_load_in_both_phases(moe_run):
    run, logs = moe_run
    recs = records(run)
    assert [r["phase"] for r in recs] == [1] * 4 + [2] * 4
    for r in recs:
        assert r["aux_loss"] > 0 and r["lm_loss"] < r["loss"]
        assert 0 <= r["expert_load_min"] <= r["expert_load_max"] <= 1
    full = [r for r in recs if "expert_load" in r]
    assert [r["step"] for r in full] == [3, 7]  # evaluation steps (eval_every=4) and the last
    for r in full:  # (MoE layers, experts) shares of positions; each position goes to top_k=2 experts
        assert len(r["expert_load"]) == 2 and all(len(row) == 4 for row in r["expert_load"])
        assert all(sum(row) == pytest.approx(2.0, abs=1e-3) for row in r["expert_load"])
    assert any("Qwen3-MoE, 4 experts, top-2" in m and "active per token" in m for m in logs)


def test_expert_collapse_gets_one_warning_per_phase(tiny_data, tmp_path):
    t = build_trainer(moe_config(tiny_data, optim__lr=1e-6), tmp_path / "run", open_dataset(tiny_data), log=quiet)
    with torch.no_grad():  # a router with no preference sends every position to the same two experts
        for block in t.model.layers:
            block.mlp.gate.weight.zero_()
            block.mlp.gate.weight.requires_grad_(False)  # and it keeps none
    logs = []
    t.log = logs.append
    t.train(progress=False)
    warnings = [m for m in logs if m.startswith("warning: expert-load collapse")]
    assert len(warnings) == 2, logs  # once in phase 1, once in phase 2
    assert "(phase 1, s=4)" in warnings[0] and "(phase 2, s=1)" in warnings[1] and "100% of positions" in warnings[0]


def test_resume_is_bit_for_bit_across_the_switch(tiny_data, tmp_path):
    cfg = moe_config(tiny_data, train__steps=8)
    straight = tmp_path / "straight"
    build_trainer(cfg, straight, open_dataset(tiny_data), log=quiet).train(progress=False)
    run = tmp_path / "resumed"
    t = build_trainer(cfg, run, open_dataset(tiny_data), log=quiet)
    t.begin(progress=False)
    while t.state.step < 3:  # a phase-1 checkpoint; the resumed part crosses the switch at step 4
        t.step_once()
    t.save_checkpoint()
    t.step_once()
    t.metrics.close()
    run_training(resume_config(run, []), run, log=quiet, resume=True)
    a, b = records(straight), records(run)
    assert [r["step"] for r in b] == list(range(8))
    for key in ("loss", "aux_loss", "grad_norm", "expert_load_max"):
        assert [r[key] for r in a] == [r[key] for r in b], key
    from safetensors.torch import load_file

    wa, wb = load_file(str(straight / "model.safetensors")), load_file(str(run / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_grad_accumulation_is_exact_for_the_aux_loss(tiny_data, tmp_path):
    """The aux loss is a statistic of each micro-batch (as transformers computes it per forward):
    the step's is the target-weighted mean over micro-batches, so 2 micro-batches of 2 rows give
    the mean of the two halves' aux losses, and the LM loss is unchanged by the split."""
    ds = open_dataset(tiny_data)
    one = build_trainer(moe_config(tiny_data), tmp_path / "a", ds, log=quiet)
    two = build_trainer(moe_config(tiny_data, train__grad_accum=2), tmp_path / "b", ds, log=quiet)
    rows = torch.from_numpy(one.loader.next_rows(4, 64))
    halves = []
    for micro in rows.chunk(2):
        log = []
        model_loss(one.model, micro, Phase.of(4), router_log=log)
        halves.append(log[0][0])
    out = two.train_step(two.schedule.phase(0))
    from superpose.core.superposition import count_valid_targets, next_bag_targets

    denom = count_valid_targets(next_bag_targets(rows[:, 1:], 4))
    assert out["router"]["aux_loss"] == pytest.approx(float(sum(halves) / denom), rel=1e-6)


def test_generate_and_eval_work_on_an_moe_run(moe_run, capsys):
    run = moe_run[0]
    model = load_model(run)
    cached = list(generate_ids(model, [0, 5, 17], 10, temperature=0.0))
    assert cached == list(generate_ids(model, [0, 5, 17], 10, temperature=0.0, use_cache=False))
    summary = json.loads((run / "summary.json").read_text())
    assert cli.main(["eval", str(run)]) == 0
    assert f"val_loss {summary['val_loss']:.4f}" in capsys.readouterr().out
    assert cli.main(["generate", str(run), "--prompt", "The red cat", "--max-new-tokens", "5", "--seed", "1"]) == 0


# ----------------------------------------------------------------------------- configs

@pytest.mark.parametrize("args,needle", [
    (["--model.top_k=9"], "model.top_k: must be <= model.n_experts=8"),
    (["--model.n_experts=0"], "model.n_experts: must be >= 1 for model.arch=qwen3_moe, got 0"),
    (["--model.moe_ffn_dim=0"], "model.moe_ffn_dim: the expert width must be >= 1, got 0"),
    (["--model.moe_ffn_dim=-4"], "model.moe_ffn_dim: the expert width must be >= 1, got -4"),
    (["--model.top_k=0"], "model.top_k: must be >= 1"),
    (["--model.mlp_only_layers=0,7"], "model.mlp_only_layers: layer indices must be in 0..1, got [7]"),
    (["--model.mlp_only_layers=a"], "model.mlp_only_layers: expected int"),
    (["--model.router_aux_coef=-1"], "model.router_aux_coef: must be finite and >= 0"),
    (["--model.n_experts=4", "--model.arch=llama"], "model.n_experts: only for model.arch=qwen3_moe"),
    (["--model.arch=mamba"], "model.arch: must be one of llama, qwen3_moe"),
])
def test_bad_moe_configs_are_one_line_and_exit_2(args, needle, tmp_path, capsys):
    with pytest.raises(UserError, match=needle.replace(".", r"\.").replace("[", r"\[").replace("]", r"\]")):
        resolve("cpu-moe", args)
    assert cli.main(["train", "--preset", "cpu-moe", "--out", str(tmp_path / "r"), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("superpose: error: ") and needle in err[0], err


def test_presets_show_total_and_active_parameters(capsys):
    assert cli.main(["presets"]) == 0
    lines = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[1:-1]}
    assert lines["10b-a1b"][1:5] == ["qwen3_moe", "10.16B", "1.44B", "1536"]
    assert lines["cpu-moe"][1] == "qwen3_moe" and lines["cpu-moe"][6] == "2/8"
    assert lines["cpu-smoke"][2] == lines["cpu-smoke"][3]  # dense: every parameter is active
    cfg = resolve("10b-a1b", [])
    assert (cfg.tst.bag_size, cfg.tst.ratio, cfg.model.router_aux_coef) == (16, 0.25, 0.001)
    assert cfg.train.batch_size * cfg.data.seq_len == 2**23  # 8M tokens (positions) a step
