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
from superpose.core.llama import LlamaConfig
from superpose.core.model import build_model
from superpose.core.superposition import (bag_weights, chunked_multi_hot_cross_entropy, multi_hot_cross_entropy,
                                          superpose_embeddings)

from test_hostile import TINY, Case, run_case, world  # noqa: F401 (world: the shared run, a fixture)
from test_hostile import test_hostile as hostile_case  # its checks, under a name pytest does not collect again

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
    # --- item 6: readers pointed at a data directory (it has a meta.json too)
    Case("eval-a-data-directory", ["eval", "{data}"], "is a prepared data directory (superpose prepare), not a trained"),
    Case("generate-a-data-directory", ["generate", "{data}", "--prompt", "hi"], "is a prepared data directory"),
    Case("export-a-data-directory", ["export", "{data}", "--hf", "{tmp}/hf"], "is a prepared data directory"),
    # --- item 7: the tracebacks left
    Case("tasks-name-not-text", ["eval", "{run}", "--tasks", "{tmp}/t.yaml"], "has task: 5, not a name",
         setup=lambda tmp, _mp: task_yaml(tmp, "task: 5\n")),
    Case("tasks-missing-data-file", ["eval", "{run}", "--tasks", "{tmp}/t.yaml"], "names the data file",
         setup=lambda tmp, _mp: task_yaml(tmp, "task: mine\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
                                          "    test: /nonexistent/test.jsonl\n")),
    Case("out-name-too-long", train("--out", "{tmp}/" + "a" * 256), "at most 255"),
    Case("out-path-too-long", train("--out", "{tmp}/" + "/".join(["b" * 200] * 21)), "a path may have at most"),
    Case("compare-out-name-too-long", compare("--out", "{tmp}/" + "a" * 256), "at most 255"),
    Case("prepare-out-name-too-long", ["prepare", "--out", "{tmp}/" + "a" * 256, "--text", "{data}/meta.json"],
         "at most 255"),
    Case("data-path-too-long", train("--data.path", "{tmp}/" + "/".join(["b" * 200] * 21)), "a path is too long"),
    # --- item 8: messages
    Case("home-unwritable", ["train", "--preset", "cpu-smoke", "--out", "{tmp}/r", *TINY, "--train.steps=2"],
         "set SUPERPOSE_CACHE to a writable folder, or use data of your own", setup=lambda tmp, mp: no_cache(mp)),
    Case("prepare-home-unwritable", ["prepare", "--out", "{tmp}/p"], "--data.path DATA_DIR",
         setup=lambda tmp, mp: no_cache(mp)),
]


def task_yaml(tmp, text: str) -> None:
    (tmp / "t.yaml").write_text(text)


def no_cache(mp) -> None:
    """HOME where no folder can be made (/dev/null is a file), and no SUPERPOSE_CACHE."""
    mp.setenv("HOME", "/dev/null")
    mp.delenv("SUPERPOSE_CACHE", raising=False)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_hostile_value(case, world, tmp_path, capsys, monkeypatch):  # noqa: F811 (world is the fixture)
    hostile_case(case, world, None, tmp_path, capsys, monkeypatch)  # no case here needs the read-only mount
    assert not (tmp_path / "c").exists() and not (tmp_path / "p").exists()  # a refused compare or prepare: nothing


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


@pytest.mark.parametrize("setting, advice", [
    ("--optim.grad_clip=0", "set --optim.grad_clip=1"), ("--optim.eps=1e-20", "raise --optim.eps"),
    ("--optim.weight_decay=5", "lower --optim.weight_decay")])
def test_nan_advice_names_an_unusual_optimizer_value_before_the_learning_rate(world, tmp_path, capsys, monkeypatch,  # noqa: F811
                                                                              setting, advice):
    from test_checkpoint import inject_nan

    inject_nan(monkeypatch, {1})
    args = [a.format(data=world["data"], tmp=tmp_path) for a in train(setting)]
    code, err = run_case(Case("nan", [], ""), args, capsys)
    line = next(x for x in err.splitlines() if x.startswith("superpose: error:"))
    assert code == 2 and "loss is nan" in line and line.index(advice) < line.index("lower --optim.lr"), line


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
        build_model(LlamaConfig(**{**MODEL, **fields}))


def test_empty_batches_are_one_value_error():
    model = build_model(LlamaConfig(**MODEL))
    calls = [lambda: model(torch.zeros(0, 4, dtype=torch.long)), lambda: model(torch.zeros(2, 0, dtype=torch.long)),
             lambda: model(inputs_embeds=torch.zeros(0, 4, 32)),
             lambda: multi_hot_cross_entropy(torch.zeros(0, 2, 10), torch.zeros(0, 2, 4, dtype=torch.long)),
             lambda: chunked_multi_hot_cross_entropy(torch.zeros(2, 0, 4), torch.zeros(10, 4),
                                                     torch.zeros(2, 0, 4, dtype=torch.long)),
             lambda: superpose_embeddings(torch.zeros(0, 8, 4), 4)]
    for call in calls:
        with pytest.raises(ValueError, match="at least one row"):
            call()


# ----------------------------------------------------------------------------- readers (item 6)

def unfinished_copy(run, tmp_path):
    """The shared run without its final model: a reader takes its newest checkpoint (step 4)."""
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    for name in ("summary.json", "model.safetensors", "model.json"):
        (copy / name).unlink()
    return copy


@pytest.mark.parametrize("damage", ["stray-empty-step", "newest-without-meta"])
def test_eval_passes_over_a_step_folder_without_meta_json(world, tmp_path, damage):  # noqa: F811
    """A step-N without meta.json is a save that never finished (meta.json is written last) or a
    stray folder, not a checkpoint: eval, generate and load_model take the newest one that has it,
    as a resume names it, instead of giving up."""
    from superpose.inference.load import locate

    run = unfinished_copy(world["run"], tmp_path)
    if damage == "stray-empty-step":
        (run / "checkpoints" / "step-000009").mkdir()
        expect = 4
    else:
        (run / "checkpoints" / "step-000004" / "meta.json").unlink()
        expect = 2
    src = locate(run)
    assert (src.kind, src.step) == ("checkpoint", expect)


def test_a_run_whose_step_folders_all_lack_meta_json_is_one_line(world, tmp_path):  # noqa: F811
    from superpose.errors import UserError
    from superpose.inference.load import locate

    run = unfinished_copy(world["run"], tmp_path)
    for step in ("step-000002", "step-000004"):
        (run / "checkpoints" / step / "meta.json").unlink()
    with pytest.raises(UserError, match="has no complete checkpoint"):
        locate(run)


def test_load_model_on_a_data_directory_says_what_it_is(world):  # noqa: F811
    from superpose.errors import UserError
    from superpose.inference.load import load_model

    with pytest.raises(UserError, match="is a prepared data directory") as e:
        load_model(world["data"])
    assert "corrupt" not in str(e.value) and "--data" in str(e.value)


# ----------------------------------------------------------------------------- tracebacks left (item 7)

def test_a_tiny_temperature_samples_like_greedy():
    """logits / 1e-40 overflowed to inf, softmax gave NaN and torch.multinomial raised."""
    from superpose.inference.generate import sample_next

    logits = torch.tensor([[1.0, 3.0, 2.0], [0.5, -1.0, 0.0]])
    for temperature in (1e-40, 1e-300):
        assert sample_next(logits, temperature, 0, torch.Generator().manual_seed(0)).tolist() == [1, 0]
    assert sample_next(logits, 1e-40, 2, torch.Generator().manual_seed(0)).tolist() == [1, 0]


def test_superpose_lm_eval_without_include_path_names_the_way(monkeypatch, capsys):
    """superpose_cloze is built from a data directory: lm-eval alone raised 'Tasks not found'."""
    pytest.importorskip("lm_eval")
    import sys

    from superpose.interop import lm_eval_adapter

    monkeypatch.setattr(sys, "argv", ["superpose-lm-eval", "--model", "superpose", "--model_args", "path=x",
                                      "--tasks", "superpose_cloze"])
    with pytest.raises(SystemExit) as e:
        lm_eval_adapter.main()
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err and err.count("\n") == 1
    assert "--include_path" in err and "superpose eval RUN_DIR --tasks superpose_cloze" in err


def test_more_fewshot_than_examples_is_one_line(world, tmp_path, capsys):  # noqa: F811
    pytest.importorskip("lm_eval")
    case = Case("fewshot", [], "")
    args = ["eval", str(world["run"]), "--tasks", "superpose_cloze", "--limit", "1", "--num-fewshot", "100000"]
    code, err = run_case(case, args, capsys)
    assert code == 2 and "Traceback" not in err
    assert [line for line in err.splitlines() if line.startswith("superpose:")] == [
        "superpose: error: --num-fewshot 100000 is more examples than a task has to draw them from; use fewer (0 for "
        "none; the paper's evaluation is 0-shot)"]


# ----------------------------------------------------------------------------- messages (item 8)

def test_commands_in_messages_are_shell_quoted(tmp_path):
    """A path with a space or a quote pastes back as one argument."""
    import shlex

    from superpose.checkpoint import checkpoint_advice
    from superpose.errors import command

    odd = tmp_path / "my runs" / "it's $HOME"
    assert shlex.split(command("superpose", "train", "--resume", odd))[-1] == str(odd)
    advice = checkpoint_advice(odd)  # no checkpoint: the command that started it
    assert shlex.quote(str(odd)) in advice and f" {odd})" not in advice


def test_plot_on_a_full_disk_says_it_once(world, tmp_path, capsys, monkeypatch):  # noqa: F811
    import errno

    from matplotlib.figure import Figure

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", full)
    code, err = run_case(Case("plot", [], ""), ["plot", str(world["run"]), "--out", str(tmp_path / "p.png")], capsys)
    lines = [line for line in err.splitlines() if line.startswith("superpose:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].count("metrics.jsonl is only read") == 1 and "free some space" in lines[0]
    assert not list(tmp_path.iterdir())  # no partial image left
