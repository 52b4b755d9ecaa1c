"""Hugging Face: export parity, import, and TST on any Hugging Face causal LM, all offline on CPU.

- `superpose export --hf`: transformers loads the folder offline and gives superpose's logits (to
  1e-5 in float32) and token ids; the name map round-trips; phase-1 checkpoints are refused.
- `--init-from-hf`: the exported weights start a new run exactly; conflicting overrides and another
  tokenizer are refused.
- `superpose.interop.hf_trainer.superposition_loss` on Llama, Qwen2 and GPT-NeoX built from small local configs
  equals a manual computation (and superpose's own loss for the same Llama), and `TSTTrainer`
  crosses the phase switch in one run, matching a hand-written loop step for step.

Run: .venv/bin/pytest tests/test_hf.py
"""

import copy
import json
import os

import pytest
import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach a hub
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

transformers = pytest.importorskip("transformers")

from superpose import cli  # noqa: E402
from superpose.inference.load import load_model, load_tokenizer  # noqa: E402
from superpose.core.tst_spec import TSTSpec  # noqa: E402
from superpose.data import open_dataset  # noqa: E402
from superpose.errors import UserError  # noqa: E402
from superpose.interop.hf_llama import (HF_NAME_MAP, config_from_hf, export_hf, from_hf_name, read_hf_config,  # noqa: E402
                                 to_hf_name)
from superpose.interop.hf_trainer import TokenRows, TSTTrainer, next_token_loss, superposition_loss  # noqa: E402
from superpose.core.llama import LlamaConfig  # noqa: E402
from superpose.core.model import build_model  # noqa: E402
from superpose.core.superposition import multi_hot_cross_entropy, next_bag_targets, superpose_embeddings  # noqa: E402
from superpose.training import build_trainer  # noqa: E402

from conftest import random_weights, tiny_config  # noqa: E402


def quiet(_):
    pass


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run(checkpointed_run):
    return checkpointed_run


def hf_parity(model_dir, hf_dir, T=40):
    ours = load_model(model_dir)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    x = torch.randint(0, ours.config.vocab_size, (3, T), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = (ours(x) - theirs(x).logits).abs().max().item()
    return diff, theirs


def batch_shapes(trainer) -> list[tuple[int, ...]]:
    """The shape of every batch `trainer` computes a loss on, filled in as it trains."""
    shapes, compute = [], trainer.compute_loss
    trainer.compute_loss = lambda m, inputs, **kw: (shapes.append(tuple(inputs["input_ids"].shape)),
                                                    compute(m, inputs, **kw))[1]
    return shapes


# ----------------------------------------------------------------------------- export

def test_name_map_round_trips_every_tensor():
    model = build_model(LlamaConfig(vocab_size=64, dim=32, n_layers=3, n_heads=4, n_kv_heads=2))
    names = list(model.state_dict())
    hf = [to_hf_name(n) for n in names]
    assert len(set(hf)) == len(names) and all(from_hf_name(h) == n for h, n in zip(hf, names))
    assert to_hf_name("layers.2.mlp.down_proj.weight") == "model.layers.2.mlp.down_proj.weight"
    assert len(HF_NAME_MAP) == 12 and from_hf_name("model.layers.0.self_attn.rotary_emb.inv_freq") is None


@pytest.mark.parametrize("tied", [False, True])
def test_export_gives_transformers_the_same_logits_and_token_ids(run, tmp_path, tied):
    """A run directory with random large weights (GQA, tied or not, RoPE theta 500k, T beyond the
    trained context) exported and loaded back by transformers, offline: logits agree to 1e-5."""
    cfg = LlamaConfig(vocab_size=320, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, rope_theta=500000.0,
                      max_seq_len=64, tie_embeddings=tied)
    src = tmp_path / "src"
    src.mkdir()
    model = random_weights(build_model(cfg))
    assert (model.lm_head.weight is model.embed_tokens.weight) == tied  # build_model keeps the tie
    from safetensors.torch import save_model

    save_model(model, str(src / "model.safetensors"))
    (src / "model.json").write_text(json.dumps(cfg.to_dict()))
    for name in ("config.json", "tokenizer.json"):
        (src / name).write_bytes((run / name).read_bytes())
    out = export_hf(src, tmp_path / "hf", log=quiet)
    assert {p.name for p in out.iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json",
                                                "tokenizer_config.json", "generation_config.json"}
    diff, theirs = hf_parity(src, out)
    print(f"max |logit diff| superpose vs transformers LlamaForCausalLM (tied={tied}): {diff:.2e}")
    assert diff < 1e-5
    assert type(theirs).__name__ == "LlamaForCausalLM" and theirs.config.tie_word_embeddings == tied
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    ours = load_tokenizer(src)
    for text in ("The red cat runs under the old tree.", "  two  spaces, ünïcödé and <|endoftext|> too\n"):
        assert hf_tok(text).input_ids == ours.encode(text, add_special_tokens=False).ids
    assert hf_tok.eos_token_id == ours.token_to_id("<|endoftext|>") == theirs.config.eos_token_id


def test_export_cli_for_a_run_and_a_phase2_checkpoint(run, tmp_path, capsys):
    assert cli.main(["export", str(run), "--hf", str(tmp_path / "final")]) == 0
    assert hf_parity(run, tmp_path / "final")[0] < 1e-5
    ckpt = run / "checkpoints" / "step-000006"
    assert cli.main(["export", str(ckpt), "--hf", str(tmp_path / "s6")]) == 0
    assert hf_parity(ckpt, tmp_path / "s6")[0] < 1e-5


@pytest.mark.parametrize("step", ["step-000002", "step-000004"])
def test_export_refuses_phase1_checkpoints(run, tmp_path, capsys, step):
    """step 4 is the switch: 4 steps of phase 1 and none of phase 2, still a bag predictor."""
    assert cli.main(["export", str(run / "checkpoints" / step), "--hf", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert (f"{step} is a phase-1 (superposition) checkpoint: its LM head predicts bags, not next tokens; export a "
            "phase-2 checkpoint or the final model") in err
    assert not (tmp_path / "x").exists()


def test_export_errors(run, tmp_path, capsys):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    cases = [([str(tmp_path / "nowhere")], "does not exist"),
             ([str(tmp_path / "full")], "is not a superpose run directory"),
             ([str(run), "--hf", str(tmp_path / "full")], "not an empty directory")]
    for args, needle in cases:
        full = ["export", *args] + ([] if "--hf" in args else ["--hf", str(tmp_path / "o")])
        assert cli.main(full) == 2
        assert needle in capsys.readouterr().err


# ----------------------------------------------------------------------------- import

def test_init_from_hf_starts_from_the_exported_weights(run, tiny_data, tmp_path, capsys):
    hf = export_hf(run, tmp_path / "hf", log=quiet)
    assert type(read_hf_config(hf)) is LlamaConfig and read_hf_config(hf) == load_model(run).config
    # The preset's architecture is replaced by the HF one; a matching override is fine.
    cfg = config_from_hf(tiny_config(tiny_data, model__dim=128), hf, ["--model.n_layers=2"])
    t = build_trainer(cfg, tmp_path / "cont", open_dataset(tiny_data), log=quiet, init_from_hf=hf)
    for name, p in load_model(run).state_dict().items():
        assert torch.equal(p, t.model.state_dict()[name]), name
    with pytest.raises(UserError, match=r"--model.dim=48 conflicts with .*config.json \(dim = 32\)"):
        config_from_hf(tiny_config(tiny_data), hf, ["--model.dim=48"])
    # Another architecture, its fields given before it or after: the folder's is llama.
    for flags in (["--model.n_experts=4", "--model.arch=qwen3_moe"], ["--model.arch=qwen3_moe", "--model.n_experts=4"]):
        with pytest.raises(UserError, match=r"--model.arch=qwen3_moe conflicts with .*config.json \(arch = llama\)"):
            config_from_hf(tiny_config(tiny_data), hf, flags)
    # CLI: a short continued run on the same data.
    assert cli.main(["train", "--preset", "cpu-smoke", "--out", str(tmp_path / "cli"), "--init-from-hf", str(hf),
                     f"--data.path={tiny_data}", "--data.seq_len=16", "--data.val_tokens=256", "--train.steps=2",
                     "--train.batch_size=2", "--tst.ratio=0.5"]) == 0
    assert "weights from the Hugging Face folder" in capsys.readouterr().err


def test_init_from_hf_errors(run, tiny_data, tmp_path, capsys):
    hf = export_hf(run, tmp_path / "hf", log=quiet)
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "gpt_neox", "hidden_size": 8}))
    tok = json.loads((hf / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]  # the same tokens, two of them with swapped ids
    vocab["a"], vocab["b"] = vocab["b"], vocab["a"]
    wrong_tok = tmp_path / "wrongtok"
    wrong_tok.mkdir()
    for f in hf.iterdir():
        (wrong_tok / f.name).write_bytes(f.read_bytes())
    (wrong_tok / "tokenizer.json").write_text(json.dumps(tok))
    base = ["train", "--preset", "cpu-smoke", "--out", str(tmp_path / "r"), f"--data.path={tiny_data}",
            "--data.seq_len=16"]
    cases = [(["--init-from-hf", str(tmp_path / "nowhere")], "no such directory"),
             (["--init-from-hf", str(other)], "describes a 'gpt_neox' model"),
             (["--init-from-hf", str(hf), "--model.n_heads=2"], "--model.n_heads=2 conflicts with"),
             (["--init-from-hf", str(wrong_tok)], "tokenized with another tokenizer")]
    for extra, needle in cases:
        assert cli.main(base + extra) == 2, extra
        err = capsys.readouterr().err
        assert needle in err and "Traceback" not in err, err


# ----------------------------------------------------------------------------- TST on any HF model

V, S, L = 97, 3, 8


def small_hf_models():
    kw = dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              max_position_embeddings=64)
    torch.manual_seed(0)
    return {"llama": transformers.LlamaForCausalLM(transformers.LlamaConfig(num_key_value_heads=2, **kw)),
            "qwen2": transformers.Qwen2ForCausalLM(transformers.Qwen2Config(num_key_value_heads=2, **kw)),
            "gpt_neox": transformers.GPTNeoXForCausalLM(transformers.GPTNeoXConfig(**kw))}


def manual_phase1_loss(model, ids, s):
    """The paper's Listing 2/3 written out: mean of s bag embeddings, positions 0..L-1, s CE terms."""
    B, n = ids.shape[0], (ids.shape[1] - 1) // s
    x, y = ids[:, :-1], ids[:, 1:]
    emb = model.get_input_embeddings()(x).view(B, n, s, -1).mean(dim=2)
    logits = model(inputs_embeds=emb, position_ids=torch.arange(n).expand(B, n)).logits
    labels = torch.cat([y[:, s - 1:], torch.full((B, s - 1), -100)], dim=1).view(B, n, s)
    return sum(F.cross_entropy(logits.reshape(-1, V), labels[..., i].reshape(-1)) for i in range(s)) / s


def test_superposition_loss_on_three_architectures():
    ids = torch.randint(0, V, (2, S * L + 1), generator=torch.Generator().manual_seed(0))
    for name, model in small_hf_models().items():
        model.eval()
        with torch.no_grad():
            got = superposition_loss(model, ids, S)
            want = manual_phase1_loss(model, ids, S)
            assert torch.allclose(got, want, atol=1e-6), name
            # s = 1 is the model's own next-token loss (HF shifts labels inside: L + 1 tokens, L targets).
            plain = model(ids[:, :L + 1], labels=ids[:, :L + 1]).loss
            assert torch.allclose(superposition_loss(model, ids[:, :L + 1], 1), plain, atol=1e-6), name
            assert torch.allclose(next_token_loss(model, ids[:, :L + 1]), plain, atol=1e-6), name


def test_superposition_loss_on_an_exported_llama_equals_superposes(run, tmp_path):
    hf = transformers.AutoModelForCausalLM.from_pretrained(export_hf(run, tmp_path / "hf", log=quiet)).eval()
    ours = load_model(run)
    ids = torch.randint(0, 320, (3, 4 * 16 + 1), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = multi_hot_cross_entropy(ours(inputs_embeds=superpose_embeddings(ours.embed(ids[:, :-1]), 4)),
                                       next_bag_targets(ids[:, 1:], 4))
        assert abs(superposition_loss(hf, ids, 4).item() - want.item()) < 1e-5


def test_superposition_loss_errors():
    class NoEmbeddings(transformers.PreTrainedModel):
        config_class = transformers.PretrainedConfig

        def __init__(self):
            super().__init__(transformers.PretrainedConfig())
            self.proj = torch.nn.Linear(4, 4)

        def get_input_embeddings(self):
            raise NotImplementedError

        def forward(self, pixel_values):
            return self.proj(pixel_values)

    with pytest.raises(UserError, match="NoEmbeddings has no input embeddings"):
        superposition_loss(NoEmbeddings(), torch.zeros(1, 9, dtype=torch.long), 2)
    llama = small_hf_models()["llama"]
    with pytest.raises(UserError, match=r"takes \(B, s\*L \+ 1\) rows"):
        superposition_loss(llama, torch.zeros(1, 10, dtype=torch.long), 4)


def test_token_rows_switch_length_after_phase1():
    rows = iter(TokenRows(torch.arange(100), seq_len=4, bag_size=3, phase1_rows=2))
    got = [next(rows)["input_ids"].tolist() for _ in range(4)]
    assert got == [list(range(0, 13)), list(range(12, 25)), list(range(24, 29)), list(range(28, 33))]


def test_tst_trainer_crosses_the_switch_in_one_run(tmp_path):
    """6 optimizer steps, r = 0.5, 2 micro-batches of 2 rows each: steps 0-2 read rows of s*L + 1
    tokens with the phase-1 loss, steps 3-5 rows of L + 1 with the next-token loss; the optimizer
    and a warmup+linear-decay scheduler run straight through. A hand-written loop with the same
    rows, AdamW and schedule ends with the same weights."""
    model = small_hf_models()["llama"]
    start = copy.deepcopy(model)
    tokens = torch.randint(0, V, (3000,), generator=torch.Generator().manual_seed(3))
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=6, per_device_train_batch_size=2, gradient_accumulation_steps=2,
        learning_rate=1e-2, lr_scheduler_type="linear", warmup_steps=2, weight_decay=0.0, max_grad_norm=1.0,
        logging_steps=1, report_to=[], save_strategy="no", use_cpu=True, seed=0, disable_tqdm=True)
    held_out = torch.randint(0, V, (200,), generator=torch.Generator().manual_seed(4))
    trainer = TSTTrainer(model=model, args=args, train_tokens=tokens, seq_len=L, tst=TSTSpec(bag_size=S, ratio=0.5),
                         eval_tokens=held_out)
    shapes = batch_shapes(trainer)
    trainer.train()
    assert shapes == [(2, S * L + 1)] * 6 + [(2, L + 1)] * 6
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert [h["bag_size"] for h in logs] == [S, S, S, 1, 1, 1]
    assert trainer.optimizer.state_dict()["state"][0]["step"] == 6  # one optimizer throughout

    opt = torch.optim.AdamW(start.parameters(), lr=1e-2, weight_decay=0.0)
    sched = transformers.get_linear_schedule_with_warmup(opt, 2, 6)
    rows = iter(TokenRows(tokens, L, S, phase1_rows=3 * 4))
    start.train()
    for step in range(6):
        for _ in range(2):
            batch = torch.stack([next(rows)["input_ids"] for _ in range(2)])
            s = S if step < 3 else 1
            loss = superposition_loss(start, batch, s) if s > 1 else next_token_loss(start, batch)
            (loss / 2).backward()
        torch.nn.utils.clip_grad_norm_(start.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
    for (name, a), b in zip(model.state_dict().items(), start.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name
    # Evaluation is next-token loss over every held-out row of L + 1 tokens.
    rows = torch.stack([r["input_ids"] for r in TokenRows(held_out, L, repeat=False)])
    with torch.no_grad():
        want = next_token_loss(model.eval(), rows).item()
    assert trainer.evaluate()["eval_loss"] == pytest.approx(want, abs=1e-5)


def test_tst_trainer_errors(tmp_path):
    model = small_hf_models()["llama"]
    ok = dict(train_tokens=torch.arange(500) % V, seq_len=L, tst=TSTSpec(bag_size=S, ratio=0.3))
    args = transformers.TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    with pytest.raises(UserError, match="max_steps"):
        TSTTrainer(model=model, args=args, **ok)
    args = transformers.TrainingArguments(output_dir=str(tmp_path), max_steps=4, report_to=[], use_cpu=True)
    with pytest.raises(UserError, match="fewer than one row"):
        TSTTrainer(model=model, args=args, **{**ok, "train_tokens": torch.arange(10)})


def test_readme_tst_trainer_example_runs(tmp_path, monkeypatch):
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "docs" / "huggingface.md").read_text()
    section = readme.split("## TST for any Hugging Face causal LM", 1)[1]
    code = re.findall(r"```python\n(.*?)```", section, re.S)[0]
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    trainer = scope["trainer"]
    assert trainer.state.global_step == 10 and trainer.switch_step == 3
