"""The hostile-user matrix: mistakes a user can make, each ending in one clear line, no traceback.

Run: OMP_NUM_THREADS=1 .venv/bin/pytest tests/test_hostile.py

Every row of CASES is one command line and what it must end in: its exit status, a fragment of
the one `superpose...:` line on stderr, no traceback, and the shared run's files unchanged
(nothing already saved is lost). To add a case, add a row:

    Case("id", ["verb", "{run}", "--flag", "value"], "fragment of the message"),

Placeholders in the arguments: {run} a finished tiny run with checkpoints (made once for the
module), {data} its data directory, {tmp} this case's empty folder, {ro} a read-only folder
holding a copy of {data} (a read-only tmpfs; the case is skipped where mounting is not allowed).
`setup(tmp, monkeypatch)` makes the files a case needs. Cases run in-process through
`superpose.cli.main` (fast); `how="process"` runs the real `python -m superpose` (for what only a
process shows: an abort inside a C library, a hang, a traceback printed by the interpreter), and
`how="python"` runs `python -c` with the first argument as code.

Python API mistakes (wrong shapes and dtypes, a bad TSTTrainer config) have their own table below.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable

import numpy as np
import pytest
import torch

from superpose import cli
from superpose.errors import UserError

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--data.seq_len=16", "--data.val_tokens=256", "--train.batch_size=2", "--model.dim=32",
        "--optim.warmup_steps=1", "--train.eval_every=0", "--train.device=cpu"]


def tiny_train(out: str, *extra: str) -> list[str]:
    return ["train", "--preset", "cpu-smoke", "--out", out, "--data.path", "{data}", "--train.steps=4", *TINY, *extra]


# ----------------------------------------------------------------------------- setups

def text_file(tmp: Path, _mp=None) -> None:
    random.seed(0)
    words = "the cat sees a dog near the old tree and a red ship".split()
    (tmp / "t.txt").write_text("\n<|endoftext|>\n".join(" ".join(random.choices(words, k=40)) for _ in range(60)))


def truncated_gz(tmp: Path, _mp=None) -> None:
    rng = random.Random(0)
    lines = "".join(json.dumps({"text": " ".join(rng.choice("abcdefgh") * 3 for _ in range(30))}) + "\n"
                    for _ in range(3000)).encode()
    data = gzip.compress(lines)
    (tmp / "t.jsonl.gz").write_bytes(data[:len(data) // 2])


def corrupt_zst(tmp: Path, _mp=None) -> None:
    zstandard = pytest.importorskip("zstandard")
    data = bytearray(zstandard.ZstdCompressor().compress(("Hello there. " * 4000).encode()))
    data[20:40] = b"x" * 20
    (tmp / "c.txt.zst").write_bytes(bytes(data))


def binary_metrics(tmp: Path, _mp=None) -> None:
    (tmp / "r").mkdir()
    (tmp / "r" / "metrics.jsonl").write_bytes(bytes(random.Random(0).randrange(256) for _ in range(3000)))


def mistyped_metrics(tmp: Path, _mp=None) -> None:
    (tmp / "r").mkdir()
    (tmp / "r" / "metrics.jsonl").write_text(json.dumps({"type": "train", "step": "one", "loss": 1.0, "lr": 1e-3,
                                                         "grad_norm": 1.0, "phase": 1, "bag_size": 4}) + "\n")


def garbage_metrics(tmp: Path, _mp=None) -> None:
    (tmp / "r").mkdir()
    (tmp / "r" / "metrics.jsonl").write_text("not json at all\n{\"type\": \"train\"\n")


def a_file(tmp: Path, _mp=None) -> None:
    (tmp / "afile").write_text("not a folder")


def bad_yaml(tmp: Path, _mp=None) -> None:
    pytest.importorskip("lm_eval")
    (tmp / "bad.yaml").write_text("task: [unclosed\n  foo: : :\n")


def negative_tokens(tmp: Path, _mp=None) -> None:
    np.save(tmp / "t.npy", np.array([5, 7, -3, 9, 300, 2] * 50, dtype=np.int64))


def interrupt_tokenizer_training(tmp: Path, mp) -> None:
    """Ctrl-C while the BPE is being learnt: before the first shard is finished."""
    text_file(tmp)

    def interrupted(*_a, **_k):
        raise KeyboardInterrupt

    mp.setattr("superpose.data.prepare.train_tokenizer", interrupted)


def two_sigterms(tmp: Path, mp) -> None:
    """Two SIGTERMs inside step 1 (a scheduler's TERM, then the user's): the second stops at once."""
    from superpose.training import Trainer

    step_once = Trainer.step_once

    def step(self):
        out = step_once(self)
        if self.state.step == 2:
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    mp.setattr(Trainer, "step_once", step)


def allocator_refuses(tmp: Path, mp) -> None:
    """What torch's CPU allocator raises when an allocation fails past the memory check
    (activations, which it does not count)."""
    def build_model(*_a, **_k):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 1099511627776 bytes. Error code 12 (Cannot allocate memory)")

    mp.setattr("superpose.training.build.build_model", build_model)


def guard(target: str, what: str) -> Callable:
    """A setup that makes `target` fail the test if it is reached: the call the case must never
    get to (on main it aborted the process, or ran for ever)."""
    def setup(tmp: Path, mp) -> None:
        text_file(tmp)

        def reached(*_a, **_k):
            raise AssertionError(f"reached {what}")

        mp.setattr(target, reached)
    return setup


def no_cuda(tmp: Path, _mp=None) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the case is about a CPU-only install")


# Ctrl-C while torch is importing: a finder that raises KeyboardInterrupt when `torch` is imported.
CTRL_C_IN_IMPORT = """
import sys
class Interrupt:
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            raise KeyboardInterrupt
sys.meta_path.insert(0, Interrupt())
from superpose.cli import main
sys.exit(main(["presets"]))
"""


# ----------------------------------------------------------------------------- the matrix

@dataclass
class Case:
    id: str
    args: list[str]
    needle: str
    code: int = 2
    setup: Callable | None = None
    how: str = "inprocess"  # "inprocess" (cli.main), "process" (python -m superpose), "python" (python -c)
    marks: list = field(default_factory=list)


CASES = [
    # --- tracebacks that must be one line
    Case("export-into-proc", ["export", "{run}", "--hf", "/proc/superpose-export"], "cannot create the --hf folder"),
    Case("export-under-a-file", ["export", "{run}", "--hf", "{tmp}/afile/sub"], "cannot create the --hf folder",
         setup=a_file),
    Case("export-read-only", ["export", "{run}", "--hf", "{ro}/export"], "Read-only file system"),
    Case("generate-device-cuda-cpu-only", ["generate", "{run}", "--prompt", "hi", "--device", "cuda"],
         "--device cuda: this torch is a CPU-only build", setup=no_cuda),
    Case("generate-device-garbage", ["generate", "{run}", "--prompt", "hi", "--device", "garbage"],
         "--device 'garbage' is not a device"),
    Case("eval-device-cuda-7", ["eval", "{run}", "--device", "cuda:7"], "--device cuda:7"),
    Case("train-device-cuda-7", tiny_train("{tmp}/r", "--train.device=cuda:7"), "--train.device cuda:7"),
    Case("train-seed-negative", tiny_train("{tmp}/r", "--train.seed=-1"), "train.seed: must be a whole number"),
    Case("compare-seed0-negative", ["compare", "--preset", "cpu-smoke", "--out", "{tmp}/c", "--seed0", "-5",
                                    "--data.path", "{data}", *TINY], "--seed0 must be a whole number"),
    Case("generate-seed-huge", ["generate", "{run}", "--prompt", "hi", "--max-new-tokens", "2", "--seed", str(10**23)],
         "--seed must be a whole number"),
    Case("model-too-large", tiny_train("{tmp}/r", "--model.dim=262144"), "parameters: its weights, gradients"),
    Case("allocator-refuses", tiny_train("{tmp}/r"), "out of memory", setup=allocator_refuses),
    Case("prepare-vocab-size-huge", ["prepare", "--out", "{tmp}/p", "--text", "{tmp}/t.txt", "--vocab-size",
                                     "1000000000"], "--vocab-size 1,000,000,000 is more than",
         setup=guard("superpose.data.prepare.train_tokenizer", "the tokenizers library, which aborts the process")),
    Case("train-steps-past-int64", tiny_train("{tmp}/r", "--train.steps=99999999999999999999999"),
         "train.steps: must be at most", setup=guard("superpose.training.trainer.Trainer.step_once",
                                                     "training, which would never end")),
    Case("prepare-truncated-gz", ["prepare", "--out", "{tmp}/p", "--text", "{tmp}/t.jsonl.gz"],
         "gzip data is truncated or corrupt", setup=truncated_gz),
    Case("prepare-corrupt-zst", ["prepare", "--out", "{tmp}/p", "--text", "{tmp}/c.txt.zst"],
         "zstd data is truncated or corrupt", setup=corrupt_zst),
    Case("plot-binary-metrics", ["plot", "{tmp}/r"], "line 1 is not a JSON record", setup=binary_metrics),
    Case("plot-mistyped-metrics", ["plot", "{tmp}/r"], "has step='one', not a number", setup=mistyped_metrics),
    Case("mi-read-only", ["mi", "--data", "{ro}/data"], "is read-only, and superpose mi writes"),
    Case("tasks-limit-0", ["eval", "{run}", "--tasks", "superpose_cloze", "--limit", "0"], "--limit must be >= 1"),
    Case("tasks-limit-negative", ["eval", "{run}", "--tasks", "superpose_cloze", "--limit", "-3"],
         "--limit must be >= 1"),
    Case("tasks-empty", ["eval", "{run}", "--tasks", ","], "--tasks names no task"),
    Case("tasks-invalid-yaml", ["eval", "{run}", "--tasks", "{tmp}/bad.yaml"], "is not valid YAML", setup=bad_yaml),
    Case("prompt-not-utf8", ["generate", "{run}", "--prompt", "caf\udcc3", "--max-new-tokens", "2"],
         "--prompt is not valid UTF-8"),
    Case("ctrl-c-while-torch-imports", [CTRL_C_IN_IMPORT], "superpose: interrupted", code=130, how="python"),
    # --- messages that misled
    Case("config-dir-without-config-json", ["train", "--config", "{data}", "--out", "{tmp}/r"],
         "is a directory without config.json"),
    Case("resume-a-file", ["train", "--resume", "{tmp}/afile"], "is a file, not a run directory", setup=a_file),
    Case("eval-json-a-directory", ["eval", "{run}", "--json", "{tmp}"], "is a directory; give a file path"),
    Case("prepare-interrupted-keeps-nothing", ["prepare", "--out", "{tmp}/p", "--text", "{tmp}/t.txt",
                                               "--vocab-size", "300"], "no shard was finished, so nothing is kept",
         setup=interrupt_tokenizer_training),
    Case("plot-corrupt-metrics-is-not-no-step", ["plot", "{tmp}/r"], "line 1 is not a JSON record",
         setup=garbage_metrics),
    Case("two-sigterms", tiny_train("{tmp}/r", "--checkpoint.every=1"), "second SIGTERM", code=128 + 15,
         setup=two_sigterms),
    Case("prepare-tokens-negative-id", ["prepare", "--out", "{tmp}/p", "--tokens", "{tmp}/t.npy", "--tokenizer",
                                        "{data}/tokenizer.json"], "has token id -3 outside", setup=negative_tokens),
]


# ----------------------------------------------------------------------------- fixtures and runner

@pytest.fixture(scope="module")
def world(tiny_data, tmp_path_factory):
    """{data}: a copy of the tiny data; {run}: a finished 4-step TST run on it, checkpoints at 2 and 4."""
    root = tmp_path_factory.mktemp("hostile")
    data = root / "data"
    shutil.copytree(tiny_data, data)
    run = root / "run"
    args = [a.format(data=data) for a in tiny_train(str(run), "--checkpoint.every=2")]
    assert cli.main(args) == 0
    return {"data": data, "run": run, "root": root}


@pytest.fixture(scope="module")
def read_only(world):
    """{ro}: a read-only tmpfs holding a copy of {data}; None where mounting is not permitted."""
    ro = world["root"] / "ro"
    ro.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(ro)]
    if subprocess.run(mount, capture_output=True).returncode != 0:
        yield None
        return
    try:
        shutil.copytree(world["data"], ro / "data")
        if subprocess.run(["mount", "-o", "remount,ro", str(ro)], capture_output=True).returncode != 0:
            yield None
        else:
            yield ro
    finally:
        subprocess.run(["umount", str(ro)], capture_output=True)


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".superpose.lock"}


def run_case(case: Case, args: list[str], capsys) -> tuple[int, str]:
    if case.how == "inprocess":
        try:
            code = cli.main(args)
        except SystemExit as e:  # argparse, and train's exit on a signal
            code = e.code if isinstance(e.code, int) else 1
        return code, capsys.readouterr().err
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", args[0]] if case.how == "python" else [sys.executable, "-m", "superpose", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    return proc.returncode, proc.stderr


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_hostile(case, world, read_only, tmp_path, capsys, monkeypatch):
    if any("{ro}" in a for a in case.args) and read_only is None:
        pytest.skip("mounting a read-only tmpfs is not permitted here")
    if case.setup:
        case.setup(tmp_path, monkeypatch)
    args = [a.format(run=world["run"], data=world["data"], tmp=tmp_path, ro=read_only) if case.how != "python"
            else a for a in case.args]
    before = digest(world["run"])
    code, err = run_case(case, args, capsys)
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith(("superpose:", "superpose-lm-eval:"))]
    assert len(lines) == 1 and case.needle in lines[0], err
    assert code == case.code, err
    assert digest(world["run"]) == before  # nothing already saved was touched


# ----------------------------------------------------------------------------- the Python API

def api_cases():
    from superpose.core import superposition as sp

    ids = torch.zeros(2, 8, dtype=torch.long)
    logits = torch.randn(2, 3, 10)
    t3 = torch.zeros(2, 3, 2, dtype=torch.long)
    return [
        ("embeds-2d", lambda: sp.superpose_embeddings(torch.randn(2, 8), 4), ValueError, "embeds"),
        ("embeds-integer", lambda: sp.superpose_embeddings(torch.ones(2, 8, 3, dtype=torch.long), 2), TypeError,
         "embeds"),
        ("bag-size-float", lambda: sp.superpose_embeddings(torch.randn(2, 8, 3), 2.5), TypeError, "bag_size"),
        ("labels-1d", lambda: sp.next_bag_targets(torch.zeros(8, dtype=torch.long), 4), ValueError, "labels"),
        ("labels-float", lambda: sp.next_bag_targets(torch.zeros(2, 8), 4), TypeError, "labels"),
        ("window-labels-1d", lambda: sp.bag_targets(torch.zeros(8, dtype=torch.long), 2, "output"), ValueError,
         "labels"),
        ("token-ids-float", lambda: sp.superpose_token_embeddings(ids.float(), torch.randn(10, 4), 2), TypeError,
         "input_ids"),
        ("targets-2d", lambda: sp.multi_hot_cross_entropy(logits, torch.zeros(2, 3, dtype=torch.long)), ValueError,
         "targets"),
        ("targets-other-positions", lambda: sp.multi_hot_cross_entropy(logits, torch.zeros(2, 4, 2, dtype=torch.long)),
         ValueError, "targets"),
        ("targets-float", lambda: sp.multi_hot_cross_entropy(logits, torch.zeros(2, 3, 2)), TypeError, "targets"),
        ("logits-2d", lambda: sp.multi_hot_cross_entropy(torch.randn(6, 10), t3), ValueError, "logits"),
        ("chunked-head-d", lambda: sp.chunked_multi_hot_cross_entropy(torch.randn(2, 3, 4), torch.randn(10, 5), t3),
         ValueError, "head"),
        ("count-targets-2d", lambda: sp.count_valid_targets(torch.zeros(2, 3, dtype=torch.long)), ValueError,
         "targets"),
    ]


@pytest.mark.parametrize("name,call,error,argument", api_cases(), ids=[c[0] for c in api_cases()])
def test_api_mistakes_name_the_argument(name, call, error, argument):
    with pytest.raises(error, match=argument):
        call()


def test_user_error_is_a_value_error():
    """TSTTrainer's config mistakes are UserErrors (tests/test_hf.py::test_tst_trainer_errors), which
    Python callers can now catch as the ValueError they are; the CLI still prints them in one line."""
    assert issubclass(UserError, ValueError)
    with pytest.raises(ValueError, match="does not exist"):
        from superpose.inference.load import load_model

        load_model("/nonexistent/run")


def test_validation_ids_outside_the_vocabulary_are_one_line(world):
    """Only the train split was checked: an id past the model's vocabulary in the validation split
    (a data directory whose tokenizer does not match) reached the embedding as an IndexError."""
    from superpose.data import open_dataset, val_windows

    ds = open_dataset(world["data"])
    top = int(val_windows(ds, 16, 256).max())
    with pytest.raises(UserError, match=f"token id {top} in the validation split .* outside the model's vocabulary"):
        val_windows(ds, 16, 256, vocab_size=top)


def test_a_pickle_payload_is_refused_without_torch_s_hint(tmp_path):
    from superpose.checkpoint import load_torch

    torch.save({"state": Payload()}, tmp_path / "optimizer.pt")
    with pytest.raises(UserError) as e:
        load_torch(tmp_path, "optimizer.pt")
    assert "holds Python objects besides tensors" in str(e.value) and "weights_only" not in str(e.value)


class Payload:
    def __reduce__(self):
        return (print, ("a pickle payload ran",))


def test_lm_eval_loads_an_exported_folder_and_checks_max_length(world, tmp_path):
    """The README says superpose-lm-eval accepts an exported folder; it refused one."""
    pytest.importorskip("lm_eval")
    from superpose.interop.hf_llama import export_hf
    from superpose.interop.lm_eval_adapter import SuperposeLM

    export_hf(world["run"], tmp_path / "hf", log=lambda m: None)
    run, exported = SuperposeLM.from_path(path=str(world["run"])), SuperposeLM.from_path(path=str(tmp_path / "hf"))
    x = torch.arange(12)[None] % 300
    with torch.no_grad():
        assert torch.equal(run.model(x), exported.model(x))
    assert exported.max_length == run.max_length == 16  # the trained context, recorded by the export
    for bad in ("abc", -1, 0, 2.5):
        with pytest.raises(UserError, match="max_length=.* must be a whole number >= 1"):
            SuperposeLM.from_path(path=str(world["run"]), max_length=bad)
