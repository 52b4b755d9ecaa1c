"""Loading, generation and evaluation of trained runs and checkpoints, offline on CPU.

- `load_model` / `load_tokenizer` take a run directory, a checkpoint, or a run that has only
  checkpoints; wrong folders and a missing tokenizer end in one clear line.
- The KV cache: prefill is bit-identical to the uncached forward, incremental logits match the
  full forward, and cached greedy decoding gives the uncached tokens.
- `superpose eval` reproduces the trainer's val_loss / val_bpb exactly, of a bf16 run too;
  `--tasks` runs lm-eval through the `SuperposeLM` adapter on the shipped superpose_cloze task
  (built from held-out text) and on a user's task yaml with a local JSONL file.

Run: .venv/bin/pytest tests/test_generate_eval.py
"""

import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from superpose import cli  # noqa: E402
from superpose.inference.load import load_model, load_tokenizer, locate  # noqa: E402
from superpose.errors import UserError  # noqa: E402
from superpose import checkpoint  # noqa: E402
from superpose.inference.generate import generate_ids  # noqa: E402
from superpose.core.layers import KVCache  # noqa: E402
from superpose.core.llama import LlamaConfig  # noqa: E402
from superpose.core.model import build_model  # noqa: E402
from superpose.data.prepare import prepare  # noqa: E402

from conftest import make_documents, tiny_config  # noqa: E402
from superpose.data import corpus  # noqa: E402


def quiet(_):
    pass


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run(checkpointed_run):
    return checkpointed_run


# ----------------------------------------------------------------------------- loading

def test_load_model_from_a_run_a_checkpoint_and_a_run_with_only_checkpoints(run, tmp_path):
    final = load_model(run)
    x = torch.randint(0, 320, (2, 16))
    assert final(x).shape == (2, 16, 320) and not final.training
    ckpt = load_model(run / "checkpoints" / "step-000006")
    assert locate(run / "checkpoints" / "step-000006").step == 6
    assert not torch.equal(ckpt(x), final(x))
    # A run whose final model is not written yet: the newest checkpoint, tokenizer from the data dir.
    partial = tmp_path / "partial"
    shutil.copytree(run / "checkpoints", partial / "checkpoints")
    (partial / "metrics.jsonl").write_text("")
    src = locate(partial)
    assert src.kind == "checkpoint" and src.name == "step-000008"
    assert torch.equal(load_model(partial)(x), final(x))  # step 8 is the end of the run
    assert load_tokenizer(partial).get_vocab() == load_tokenizer(run).get_vocab()


def test_loading_errors(run, tmp_path):
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (hf / "model.safetensors").write_bytes(b"")
    started = tmp_path / "started"
    started.mkdir()
    (started / "metrics.jsonl").write_text("")
    cases = [(tmp_path / "nowhere", "does not exist"), (run / "config.json", "is a file"),
             (tmp_path, "is not a superpose run directory"), (hf, "is a Hugging Face model folder"),
             (started, "neither a final model")]
    for path, needle in cases:
        with pytest.raises(UserError, match=needle):
            load_model(path)
    # A checkpoint copied away from its run, whose data directory is gone: no tokenizer anywhere.
    lone = tmp_path / "lone" / "step-000006"
    shutil.copytree(run / "checkpoints" / "step-000006", lone)
    meta = json.loads((lone / "meta.json").read_text())
    meta["config"]["data"]["path"] = str(tmp_path / "gone")
    meta["checksum"] = checkpoint.meta_checksum(meta)  # as a run on that data would have written it
    (lone / "meta.json").write_text(json.dumps(meta))
    assert load_model(lone) is not None
    with pytest.raises(UserError, match="no tokenizer for .*copy the tokenizer.json"):
        load_tokenizer(lone)


# ----------------------------------------------------------------------------- KV cache

def test_kv_cache_matches_the_full_forward():
    torch.manual_seed(0)
    model = build_model(LlamaConfig(vocab_size=50, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, init_std=0.2)).eval()
    x = torch.randint(0, 50, (2, 20))
    with torch.no_grad():
        full = model(x)
        cache = KVCache(2)
        prefill = model(x[:, :8], cache=cache)
        assert torch.equal(prefill, model(x[:, :8]))  # an empty cache computes what no cache does
        steps = [prefill] + [model(x[:, t:t + 1], cache=cache) for t in range(8, 12)]
        steps.append(model(x[:, 12:], cache=cache))  # several new tokens at once
    assert cache.length == 20
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-5)


def test_cached_greedy_decoding_equals_uncached(run):
    model = load_model(run)
    for prompt in ([0, 5, 17], [0]):
        cached = list(generate_ids(model, prompt, 12, temperature=0.0))
        plain = list(generate_ids(model, prompt, 12, temperature=0.0, use_cache=False))
        assert cached == plain and len(cached) >= 1
    a = list(generate_ids(model, [0, 5], 10, temperature=1.0, top_k=20, seed=3))
    assert a == list(generate_ids(model, [0, 5], 10, temperature=1.0, top_k=20, seed=3))


def test_generate_cli(run, capsys):
    args = ["generate", str(run), "--prompt", "The red cat", "--max-new-tokens", "8", "--seed", "1"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert out.startswith("The red cat") and len(out) > len("The red cat\n")
    assert cli.main(args) == 0 and capsys.readouterr().out == out  # same seed, same text
    assert cli.main(["generate", str(run / "checkpoints" / "step-000002"), "--prompt", "a",
                     "--max-new-tokens", "3"]) == 0
    assert "phase-1 (superposition) checkpoint" in capsys.readouterr().err
    for bad, needle in ((["--max-new-tokens", "16"], "does not fit the model's context of 16"),
                        (["--temperature", "-1"], "--temperature must be >= 0")):
        assert cli.main(["generate", str(run), "--prompt", "a", *bad]) == 2
        assert needle in capsys.readouterr().err


# ----------------------------------------------------------------------------- validation loss

def test_eval_reproduces_the_trainers_validation_numbers(run, tmp_path, capsys):
    summary = json.loads((run / "summary.json").read_text())
    assert cli.main(["eval", str(run), "--json", str(tmp_path / "e.json")]) == 0
    got = json.loads((tmp_path / "e.json").read_text())
    assert got["val_loss"] == summary["val_loss"] and got["val_bpb"] == summary["val_bpb"]
    assert got["val_ppl"] == pytest.approx(math.exp(summary["val_loss"]))
    assert "perplexity" in capsys.readouterr().out
    # A checkpoint on another data directory prepared with the same tokenizer.
    same_tok = prepare(tmp_path / "same", [corpus.Source("x", "CC0", "gen", make_documents(60, 9))],
                       tokenizer=run / "tokenizer.json", val_fraction=0.3, log=quiet)
    assert cli.main(["eval", str(run / "checkpoints" / "step-000006"), "--data", str(same_tok),
                     "--val-tokens", "256"]) == 0
    assert "256 held-out tokens" in capsys.readouterr().out


def test_eval_of_a_bf16_run_reproduces_its_own_validation_numbers(tiny_data, tmp_path):
    """A run trained under bf16 autocast is scored under it too, by the trainer's own evaluation
    function, so `superpose eval` gives the summary's numbers exactly; scored in float32 (what
    `superpose eval` did before) they differ."""
    from superpose.data import open_dataset
    from superpose.inference.evaluate import next_token_eval
    from superpose.training import build_trainer

    run = tmp_path / "bf16"
    t = build_trainer(tiny_config(tiny_data, train__dtype="bfloat16", train__steps=4), run, open_dataset(tiny_data),
                      log=quiet)
    t.train(progress=False)
    summary = json.loads((run / "summary.json").read_text())
    assert cli.main(["eval", str(run), "--json", str(tmp_path / "e.json")]) == 0
    got = json.loads((tmp_path / "e.json").read_text())
    assert (got["val_loss"], got["val_bpb"]) == (summary["val_loss"], summary["val_bpb"])
    fp32 = next_token_eval(load_model(run), t.val, t.cfg.train.batch_size, torch.device("cpu"), t.token_bytes)
    assert fp32["val_loss"] != summary["val_loss"]


def test_eval_errors(run, tmp_path, capsys):
    other = prepare(tmp_path / "other", [corpus.Source("x", "CC0", "gen", make_documents(200, 5))], vocab_size=300,
                    val_fraction=0.2, log=quiet)
    assert cli.main(["eval", str(run), "--data", str(other)]) == 2
    assert "tokenized with another tokenizer" in capsys.readouterr().err
    assert cli.main(["eval", str(run), "--tasks", str(tmp_path / "missing.yaml")]) == 2
    assert "task file" in capsys.readouterr().err


# ----------------------------------------------------------------------------- lm-eval

@pytest.fixture(scope="module")
def lm(run):
    from superpose.interop.lm_eval_adapter import SuperposeLM

    return SuperposeLM(load_model(run), load_tokenizer(run), max_length=16, batch_size=3)


class Req:
    def __init__(self, *args):
        self.args = args


def test_adapter_loglikelihood_and_rolling_match_a_direct_computation(lm):
    tok, model = lm.tokenizer, lm.model
    pairs = [("The red cat", " runs under the tree."), ("", "A dog."), ("The king sees ", "a bird.")]
    got = lm.loglikelihood([Req(*p) for p in pairs])
    for (context, continuation), (logp, greedy) in zip(pairs, got):
        ctx_text = context.rstrip()
        ctx = tok.encode(ctx_text, add_special_tokens=False).ids or [lm.eot]
        cont = tok.encode(ctx_text + context[len(ctx_text):] + continuation, add_special_tokens=False).ids
        cont = cont[len(tok.encode(ctx_text, add_special_tokens=False).ids):]
        ids = torch.tensor([(ctx + cont)[-17:]])  # at most max_length = 16 inputs
        with torch.no_grad():
            lp = F.log_softmax(model(ids[:, :-1]), -1)[0, -len(cont):]
        assert logp == pytest.approx(lp.gather(-1, torch.tensor(cont)[:, None]).sum().item(), abs=1e-4)
        assert greedy == bool((lp.argmax(-1) == torch.tensor(cont)).all())
    text = "The old ship takes a song. Then the river never holds a stone."  # longer than 16 tokens
    ids = tok.encode(text, add_special_tokens=False).ids
    assert len(ids) > 16
    (rolling,) = lm.loglikelihood_rolling([Req(text)])
    # Windows of 16: the first predicts ids[:16] after end-of-text, each later one the next tokens
    # with as much preceding context as fits.
    want, inputs = 0.0, [lm.eot] + ids
    with torch.no_grad():
        for start in range(0, len(ids), 16):
            end = min(start + 16, len(ids))
            window = inputs[max(0, end - 16):end]
            lp = F.log_softmax(model(torch.tensor([window])), -1)[0, -(end - start):]
            want += lp.gather(-1, torch.tensor(ids[start:end])[:, None]).sum().item()
    assert rolling == pytest.approx(want, abs=1e-3)


def test_adapter_generate_until_is_greedy_decoding_cut_at_the_stop_string(lm):
    (text,) = lm.generate_until([Req("The red cat", {"until": ["\n\n"], "max_gen_toks": 6})])
    ids = list(generate_ids(lm.model, [lm.eot] + lm.encode("The red cat"), 6))
    ids = ids[:ids.index(lm.eot)] if lm.eot in ids else ids
    assert text == lm.tokenizer.decode(ids).split("\n\n")[0] and len(text) >= 2
    stop = text[len(text) // 2:]
    (cut,) = lm.generate_until([Req("The red cat", {"until": [stop], "max_gen_toks": 6})])
    assert cut == text[:text.index(stop)] and len(cut) < len(text)


def test_eval_tasks_runs_lm_eval_on_the_shipped_cloze_task_and_a_user_yaml(run, tmp_path, capsys):
    assert cli.main(["eval", str(run), "--tasks", "superpose_cloze", "--json", str(tmp_path / "t.json")]) == 0
    out = capsys.readouterr().out
    assert "superpose_cloze" in out and "acc" in out
    res = json.loads((tmp_path / "t.json").read_text())["tasks"]["superpose_cloze"]
    assert 0.0 <= res["acc"] <= 1.0 and res["sample_len"] >= 20
    # A user's own multiple-choice task: a yaml and a JSONL file, read offline.
    rows = [{"q": f"The {w} cat", "choices": [" runs.", " sees the river.", " king"], "label": i % 3}
            for i, w in enumerate(["red", "blue", "old", "new", "small"])]
    (tmp_path / "mine.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "mine.yaml").write_text(
        "task: my_task\ncustom_dataset: !function superpose.tasks.jsonl_dataset\n"
        f"dataset_kwargs:\n  data_files:\n    test: {tmp_path / 'mine.jsonl'}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: \"{{q}}\"\ndoc_to_choice: \"{{choices}}\"\n"
        "doc_to_target: label\ntarget_delimiter: \"\"\nmetric_list:\n  - metric: acc\nmetadata:\n  version: 1\n")
    assert cli.main(["eval", str(run), "--tasks", str(tmp_path / "mine.yaml"), "--json", str(tmp_path / "m.json")]) == 0
    assert json.loads((tmp_path / "m.json").read_text())["tasks"]["my_task"]["sample_len"] == 5


def test_hub_tasks_offline_fail_with_a_clear_line(run):
    """HellaSwag, ARC and MMLU come from the Hugging Face hub; offline, one line says so."""
    proc = subprocess.run([sys.executable, "-m", "superpose", "eval", str(run), "--tasks", "hellaswag", "--limit", "1"],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "cannot fetch the data of hellaswag" in proc.stderr and "network access" in proc.stderr


def test_readme_load_example_runs(run):
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "docs" / "huggingface.md").read_text()
    section = readme.split("## Using a trained model", 1)[1]
    code = re.findall(r"```python\n(.*?)```", section, re.S)[0].replace('"runs/demo"', repr(str(run)))
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["logits"].shape == (1, scope["ids"].shape[1], 320)


def test_build_cloze_takes_str_paths_as_the_readme_writes_them(tiny_data, tmp_path):
    from superpose.tasks import build_cloze

    yaml = build_cloze(str(tiny_data), str(tmp_path / "tasks"))
    assert yaml.is_file() and (tmp_path / "tasks" / "superpose_cloze.jsonl").read_text().count("\n") >= 10


def test_lm_eval_by_name_through_its_own_cli_and_python_api(run, tmp_path):
    """`superpose-lm-eval --model superpose --model_args path=RUN` (lm-eval's CLI, with the model
    registered) and `lm_eval.simple_evaluate(model="superpose")` score the local cloze task as
    `superpose eval` does, and no stray git message reaches the terminal."""
    import lm_eval

    from superpose.tasks import build_cloze

    tasks = build_cloze(json.loads((run / "config.json").read_text())["data"]["path"], tmp_path / "tasks").parent
    cli_out = tmp_path / "cli"
    proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), "superpose-lm-eval"), "--model", "superpose",
                           "--model_args", f"path={run}", "--tasks", "superpose_cloze", "--include_path", str(tasks),
                           "--limit", "12", "--output_path", str(cli_out)],  # lm-eval's default device
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "fatal:" not in proc.stderr and "superpose_cloze" in proc.stdout
    (result,) = cli_out.rglob("results_*.json")
    acc = json.loads(result.read_text())["results"]["superpose_cloze"]["acc,none"]
    import superpose.interop.lm_eval_adapter  # noqa: F401  (registers "superpose" with lm-eval)
    from lm_eval.tasks import TaskManager

    py = lm_eval.simple_evaluate(model="superpose", model_args=f"path={run}", tasks=["superpose_cloze"], limit=12,
                                 task_manager=TaskManager(include_path=str(tasks), include_defaults=False))
    assert py["results"]["superpose_cloze"]["acc,none"] == acc
    native = cli.main(["eval", str(run), "--tasks", str(tasks / "superpose_cloze.yaml"), "--limit", "12",
                       "--json", str(tmp_path / "n.json")])
    assert native == 0 and json.loads((tmp_path / "n.json").read_text())["tasks"]["superpose_cloze"]["acc"] == acc
    # A wrong path or model_arg: one line, exit 2.
    for args, needle in ((f"path={tmp_path / 'missing'}", "missing"), (f"path={run},temperature=1", "unknown")):
        bad = subprocess.run([os.path.join(os.path.dirname(sys.executable), "superpose-lm-eval"), "--model",
                              "superpose", "--model_args", args, "--tasks", "superpose_cloze", "--include_path",
                              str(tasks), "--limit", "1"], capture_output=True, text=True, timeout=600, cwd=tmp_path)
        assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr
        assert bad.stderr.strip().splitlines()[-1].startswith("superpose-lm-eval: ") and needle in bad.stderr


def test_an_exported_model_offers_lm_eval_room_and_keeps_its_trained_context(run, tmp_path):
    from lm_eval.models.utils import resolve_max_length
    from transformers import AutoConfig, AutoTokenizer

    from superpose.interop.hf_llama import config_from_hf, export_hf

    out = export_hf(run, tmp_path / "hf", log=quiet)
    hf = AutoConfig.from_pretrained(out)
    assert resolve_max_length(hf) == 2048  # > lm-eval's max_gen_toks (256): generation tasks run
    trained = json.loads((run / "config.json").read_text())["model"]["max_seq_len"]
    assert hf.superpose_max_seq_len == trained < 2048 == AutoTokenizer.from_pretrained(out).model_max_length
    from superpose.config import Config

    assert config_from_hf(Config(), out, []).model.max_seq_len == trained  # the round trip keeps the architecture
