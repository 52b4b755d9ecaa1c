"""Nothing lost, round 4 (issue 31, items 1-3): compare and sweep follow train's folder rule; a
folder is a run's or an experiment's only by the mark superpose wrote there, never by its file
names; and an integrity record that is missing fails closed, unless its format is genuinely
older, which is then said.

Each test failed on e8a7a41. Every refusal is one `superpose: error:` line with exit status 2,
and the folders it names are unchanged bit for bit (hidden files included).

Run: OMP_NUM_THREADS=1 .venv/bin/pytest -q tests/test_ownership_integrity.py
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from superpose.errors import UserError
from superpose.experiments.compare import compare
from superpose.experiments.sweep import sweep

from conftest import one_line, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")

MODEL = ["--model.dim=32", "--model.n_layers=2", "--model.n_heads=4", "--model.n_kv_heads=2",
         "--model.max_seq_len=32", "--data.seq_len=16", "--data.val_tokens=1024", "--optim.warmup_steps=2",
         "--train.batch_size=4", "--train.eval_every=4", "--train.device=cpu", "--train.threads=1"]


def quiet(_):
    pass


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every entry under `folder`, hidden ones included, with a file's bytes (None for a folder)."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


def train(data: Path, out: Path, *extra) -> list:
    return ["train", "--preset", "cpu-smoke", "--out", out, f"--data.path={data}", "--tst.bag_size=4",
            "--tst.ratio=0.5", "--train.steps=4", *MODEL, *extra]


def experiment(verb: str, data: Path, out: Path) -> list:
    grid = ["--seeds", "1", "--baseline-lengths", "1"] if verb == "compare" else ["--bag-sizes", "2", "--ratios", "0.5"]
    return [verb, "--preset", "cpu-smoke", "--out", out, f"--data.path={data}", "--train.steps=8", *grid, *MODEL]


def edit_json(path: Path, change) -> None:
    record = json.loads(path.read_text())
    change(record)
    path.write_text(json.dumps(record, indent=2) + "\n")


# ----------------------------------------------------------------------------- shared folders

@pytest.fixture(scope="module")
def experiments(tiny_data, tmp_path_factory):
    """A finished compare (command "superpose compare A") and a finished sweep, made once."""
    root = tmp_path_factory.mktemp("experiments")
    compare(tiny_config(tiny_data), root / "cmp", seeds=[0], factors=(1.0,), log=quiet, command="superpose compare A")
    sweep(tiny_config(tiny_data, train__steps=4), root / "sw", [2], [0.5], seeds=[0], log=quiet,
          command="superpose sweep B")
    return root


@pytest.fixture
def unfinished_run(checkpointed_run, tmp_path):
    """A copy of conftest's run without its final model: --resume writes it from step-000008."""
    run = tmp_path / "run"
    shutil.copytree(checkpointed_run, run)
    for name in ("model.safetensors", "summary.json"):
        (run / name).unlink()
    return run


def hf_export(where: Path) -> None:
    where.mkdir()
    (where / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}\n')
    (where / "model.safetensors").write_bytes(b"weights")
    (where / "tokenizer.json").write_text("{}")


# ----------------------------------------------------------------------------- item 1: compare and sweep

def own_runs(tmp: Path, f) -> None:
    """A folder of the user's own: a run of theirs and their report.md (what `--out .` took over)."""
    shutil.copytree(f.run, tmp / "mine" / "runs" / "a")
    (tmp / "mine" / "report.md").write_text("# my notes\n")


# Each: how to make the folder in `tmp` (f: the shared fixtures), the --out given (relative to tmp),
# the tree that must stay unchanged.
FOREIGN = {
    "hf-export": (lambda tmp, f: hf_export(tmp / "hf"), "hf", "hf"),
    "data-dir": (lambda tmp, f: shutil.copytree(f.data, tmp / "d"), "d", "d"),
    "finished-run": (lambda tmp, f: shutil.copytree(f.run, tmp / "r"), "r", "r"),
    "own-runs-and-report": (own_runs, "mine", "mine"),
    "finished-compare": (lambda tmp, f: shutil.copytree(f.exp / "cmp", tmp / "c"), "c", "c"),
    "finished-sweep": (lambda tmp, f: shutil.copytree(f.exp / "sw", tmp / "s"), "s", "s"),
    "compare-arm": (lambda tmp, f: shutil.copytree(f.exp / "cmp", tmp / "c"), "c/seed-0/tst", "c"),
    "compare-seed": (lambda tmp, f: shutil.copytree(f.exp / "cmp", tmp / "c"), "c/seed-0", "c"),
    "sweep-cells": (lambda tmp, f: shutil.copytree(f.exp / "sw", tmp / "s"), "s/cells", "s"),
}


@pytest.mark.parametrize("verb", ["compare", "sweep"])
@pytest.mark.parametrize("kind", list(FOREIGN))
def test_compare_and_sweep_refuse_a_folder_that_is_not_their_experiment(kind, verb, tiny_data, checkpointed_run,
                                                                         experiments, tmp_path, cli_run):
    """Item 1: an export, a data directory, a run, another experiment, an arm or a folder of the
    user's own runs was taken over (report.md overwritten); now refused, nothing touched."""
    if (kind, verb) in (("finished-compare", "compare"), ("finished-sweep", "sweep")):
        pytest.skip("its own experiment: a rerun continues it (test_integrity, test_compare)")
    make, out, tree = FOREIGN[kind]
    make(tmp_path, SimpleNamespace(data=tiny_data, run=checkpointed_run, exp=experiments))
    out, tree = tmp_path / out, tmp_path / tree
    before = snapshot(tree)
    one_line(cli_run(*experiment(verb, tiny_data, out)), str(out), "choose")
    assert snapshot(tree) == before


def test_a_refused_rerun_keeps_the_mark_and_the_command_it_quotes(tiny_data, experiments, tmp_path, cli_run):
    """Item 1: a rerun refused for other settings rewrote the mark, so the guard on the arms then
    quoted that refused command; the mark keeps the command that made the experiment."""
    cmp = tmp_path / "cmp"
    shutil.copytree(experiments / "cmp", cmp)
    before = snapshot(cmp)
    with pytest.raises(UserError, match="optim.lr"):
        compare(tiny_config(tiny_data, optim__lr=1e-3), cmp, seeds=[0], factors=(1.0,), log=quiet,
                command="superpose compare OTHER")
    assert snapshot(cmp) == before
    line = one_line(cli_run("train", "--resume", cmp / "seed-0" / "tst"), "superpose compare A")
    assert "OTHER" not in line


def test_a_compare_of_an_older_superpose_is_continued_and_its_mark_sealed(tiny_data, experiments, tmp_path):
    """Item 1: the rule keeps a compare made before marks were sealed its own: a rerun reuses its
    finished seed, and leaves the mark in the sealed form."""
    cmp = tmp_path / "cmp"
    shutil.copytree(experiments / "cmp", cmp)
    mark = cmp / ".superpose-experiment.json"
    mark.write_text(json.dumps({"kind": "compare", "command": "superpose compare A"}))
    logs = []
    compare(tiny_config(tiny_data), cmp, seeds=[0], factors=(1.0,), log=logs.append, command="superpose compare A")
    assert any("seed 0 already done" in line for line in logs), logs
    record = json.loads(mark.read_text())
    assert record["kind"] == "compare" and record["command"] == "superpose compare A" and "checksum" in record


def test_an_experiment_mark_covers_only_its_own_arms(unfinished_run, tmp_path, cli_run):
    """Item 1: `compare --out .` marked the whole folder, and `train --resume runs/a` beside it was
    refused ever after. The mark (here one of that older superpose) covers only the arms."""
    top = tmp_path / "top"
    (top / "runs").mkdir(parents=True)
    shutil.move(unfinished_run, top / "runs" / "a")
    (top / ".superpose-experiment.json").write_text(json.dumps({"kind": "compare", "command": "superpose compare X"}))
    proc = cli_run("train", "--resume", top / "runs" / "a")
    assert proc.returncode == 0, proc.stderr
    assert (top / "runs" / "a" / "summary.json").is_file()
    one_line(cli_run(*train(tmp_path, top / "seed-0" / "tst")), "superpose compare X")  # its arms stay its own


# ----------------------------------------------------------------------------- item 2: train's own rule

LOOKALIKES = {
    "config-weights-metrics": {"config.json": "{}", "model.safetensors": "weights", "metrics.jsonl": "{}\n"},
    "notes-and-a-temp-name": {"notes.txt": "my notes\n", ".c.tmp-123": "my file\n"},
}


@pytest.mark.parametrize("kind", list(LOOKALIKES))
def test_train_out_refuses_a_folder_that_only_looks_like_a_run(kind, tiny_data, tmp_path, cli_run):
    """Item 2: these were taken for a run (overwritten, exit 0) or for a killed writer's leftovers
    (the file deleted); a folder is a run's only by superpose's mark."""
    out = tmp_path / "folder"
    out.mkdir()
    for name, text in LOOKALIKES[kind].items():
        (out / name).write_text(text)
    before = snapshot(out)
    one_line(cli_run(*train(tiny_data, out)), str(out), "not a superpose run directory", "new or empty --out")
    assert snapshot(out) == before


def test_train_resume_of_a_data_directory_leaves_no_lock_in_it(tiny_data, tmp_path, cli_run):
    """Item 2: `train --resume DATA_DIR` left .superpose.lock in the data folder."""
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    before = snapshot(data)
    one_line(cli_run("train", "--resume", data), str(data), "not a superpose run directory")
    assert snapshot(data) == before


def test_a_refused_train_leaves_no_folder_or_lock_behind(tiny_data, tmp_path, cli_run):
    """Item 2: a train refused after it took its lock (here: a vocabulary too small for the data)
    left an empty --out holding only its lock; a new folder is gone again, an empty one stays empty."""
    new, empty = tmp_path / "new" / "run", tmp_path / "empty"
    empty.mkdir()
    for out in (new, empty):
        one_line(cli_run(*train(tiny_data, out, "--model.vocab_size=10")), "vocab_size")
    assert not (tmp_path / "new").exists() and list(empty.iterdir()) == []


def test_a_run_of_an_older_superpose_resumes_with_a_note(unfinished_run, tiny_data, cli_run):
    """Item 2: a run written before the run mark (its checkpoints are superpose's checksummed
    record) resumes, saying so, and is marked from then on; `--out` on it says to resume it."""
    mark = unfinished_run / ".superpose-run.json"
    mark.unlink(missing_ok=True)
    before = snapshot(unfinished_run)
    one_line(cli_run(*train(tiny_data, unfinished_run)), f"--resume {unfinished_run}")
    assert snapshot(unfinished_run) == before
    proc = cli_run("train", "--resume", unfinished_run)
    assert proc.returncode == 0, proc.stderr
    assert "superpose: note:" in proc.stderr and "older superpose" in proc.stderr, proc.stderr
    assert mark.is_file()


# ----------------------------------------------------------------------------- item 3: checks never skip


def swap_tokenizer(data: Path) -> None:
    tok = json.loads((data / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    a, b = list(vocab)[300:302]
    vocab[a], vocab[b] = vocab[b], vocab[a]  # the same tokens, two ids swapped: wrong tokens, no error
    (data / "tokenizer.json").write_text(json.dumps(tok))


def flip_shard_byte(data: Path) -> None:
    shard = data / "train-00000.bin"
    raw = bytearray(shard.read_bytes())
    raw[-3] ^= 0xFF
    shard.write_bytes(bytes(raw))


@pytest.mark.parametrize("record, damage", [("tokenizer_sha256", swap_tokenizer), ("files", flip_shard_byte)])
def test_a_data_record_deleted_by_hand_fails_closed(record, damage, data_copy, tmp_path, cli_run):
    """Item 3: without tokenizer_sha256 a swapped tokenizer trained on wrong tokens; without files
    a flipped shard byte trained. A current-format meta.json must carry both."""
    edit_json(data_copy / "meta.json", lambda m: m.pop(record))
    damage(data_copy)
    one_line(cli_run(*train(data_copy, tmp_path / "run")), f"lacks its {record} record", "re-run superpose prepare")
    assert not (tmp_path / "run").exists()


def test_data_of_the_older_format_opens_unchecked_and_says_so(data_copy, tmp_path, cli_run):
    """Item 3: a version-1 data directory without the record (prepared before it existed) trains,
    with one note that it is unverified."""
    edit_json(data_copy / "meta.json", lambda m: (m.pop("files"), m.pop("tokenizer_sha256"),
                                                   m.update(format_version=1)))
    proc = cli_run(*train(data_copy, tmp_path / "run"))
    assert proc.returncode == 0, proc.stderr
    notes = [line for line in proc.stderr.splitlines() if line.startswith("superpose: note:")]
    assert len(notes) == 1 and "older superpose" in notes[0] and "unverified" in notes[0], proc.stderr


def test_a_checkpoint_checksum_deleted_by_hand_fails_closed(unfinished_run, cli_run):
    """Item 3: with meta.json's checksum removed, an edited step was resumed from
    (`meta.get("checksum", meta_checksum(meta))`); the newest checkpoint is refused, naming the previous."""
    newest = unfinished_run / "checkpoints" / "step-000008"
    edit_json(newest / "meta.json", lambda m: (m.pop("checksum"), m.update(step=6)))
    before = snapshot(unfinished_run)
    one_line(cli_run("train", "--resume", unfinished_run), f"{newest / 'meta.json'} has no checksum",
             "to resume from step-000006")
    assert snapshot(unfinished_run) == before


def test_an_older_checkpoint_without_a_checksum_resumes_and_says_so(unfinished_run, cli_run):
    """Item 3: a format-1 meta.json written before checksums came in still resumes, with a note."""
    newest = unfinished_run / "checkpoints" / "step-000008"
    edit_json(newest / "meta.json", lambda m: (m.pop("checksum"), m.update(format_version=1)))
    proc = cli_run("train", "--resume", unfinished_run)
    assert proc.returncode == 0, proc.stderr
    assert "superpose: note: checkpoint" in proc.stderr and "older superpose" in proc.stderr, proc.stderr
