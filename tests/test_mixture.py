"""Training on a weighted mixture of data directories (data.mix): rows follow the weights, each
source is read as its own shuffled walk, the global batch is the same at any world size, a resume
is bit for bit, a 2-process DDP run trains the single-process model, validation takes each
source's share, and every mistake is one line.

The second source is prepared with the tiny data's tokenizer, from other generated documents.

Run: .venv/bin/pytest tests/test_mixture.py
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from superpose import cli
from superpose.config import Config, DataConfig
from superpose.core.tst_spec import TSTSpec
from superpose.data import MixtureLoader, TrainLoader, open_dataset, open_mixture, val_windows
from superpose.data import corpus
from superpose.data.mixture import parse_mix
from superpose.data.prepare import prepare
from superpose.errors import UserError
from superpose.training import build_trainer, run_training
from superpose.training.resume import resume_config

from conftest import make_documents, tiny_config
from test_distributed import finish, max_rel, torchrun

STEPS = 12  # r = 0.5: the switch at step 6
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def quiet(msg):
    pass


def prepare_like(out, tokenizer_of, n_docs, seed):
    """A data directory of other generated documents, tokenized with `tokenizer_of`'s tokenizer."""
    docs = make_documents(n_docs, seed)
    return prepare(out, [corpus.Source(f"gen-{seed}", "CC0", "generated", docs)],
                   tokenizer=tokenizer_of / "tokenizer.json", val_fraction=0.05, log=quiet)


@pytest.fixture(scope="module")
def second_data(tiny_data, tmp_path_factory):
    return prepare_like(tmp_path_factory.mktemp("second") / "b", tiny_data, 400, seed=7)


def mix_config(mix, **overrides):
    return tiny_config("", data__mix=mix, train__steps=STEPS, train__threads=1, **overrides)


def records(run_dir, kind="train"):
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["type"] == kind]


# ----------------------------------------------------------------------------- the loader

def test_rows_follow_the_weights_and_each_source_walks_on_its_own(tiny_data, second_data):
    mixture = open_mixture(f"{tiny_data}=3,{second_data}=1")  # normalised to 0.75 / 0.25
    assert mixture.weights.tolist() == [0.75, 0.25]
    loader = MixtureLoader(mixture, seed=0, vocab_size=mixture.vocab_size)
    share = np.mean(loader.choices(0, 8000) == 0)
    assert abs(share - 0.75) < 0.02  # 8,000 draws: the binomial std is 0.005
    # Each source's rows are exactly the rows its own TrainLoader gives, in order: a source
    # advances only on the rows drawn from it.
    own = [TrainLoader(s.train, s.train_docs, seed=sub.seed, vocab_size=mixture.vocab_size)
           for s, sub in zip(mixture.sources, loader.loaders)]
    start = 0
    for num_rows, row_tokens in ((8, 64), (8, 16), (5, 64)):  # phase-1 rows, phase-2 rows, and back
        choice = loader.choices(start, num_rows)
        rows = loader.next_rows(num_rows, row_tokens)
        for i in range(2):
            n = int(np.sum(choice == i))
            if n:
                assert np.array_equal(rows[choice == i], own[i].next_rows(n, row_tokens))
        start += num_rows
    assert loader.source_epochs == [o.epoch_progress for o in own]
    assert loader.epoch_progress == max(loader.source_epochs)
    assert loader.tokens_per_epoch == int(min(mixture.sources[0].train.num_tokens / 0.75,
                                              mixture.sources[1].train.num_tokens / 0.25))
    # The two sources are different text, and a different seed draws other sources.
    assert loader.loaders[0].seed != loader.loaders[1].seed
    assert not np.array_equal(MixtureLoader(mixture, seed=1, vocab_size=320).choices(0, 64), loader.choices(0, 64))


def test_long_document_share_weighs_each_source_by_its_part_of_a_step(tiny_data, second_data):
    """A source's rows of a 64-token step are its weight of them, consecutive in its own stream."""
    mixture = open_mixture(f"{tiny_data}=3,{second_data}=1")
    loader = MixtureLoader(mixture, seed=0, vocab_size=mixture.vocab_size)
    a, b = loader.loaders
    assert loader.long_document_share(64) == pytest.approx(0.75 * a.long_document_share(48)
                                                          + 0.25 * b.long_document_share(16))


def test_the_global_batch_is_the_same_at_any_world_size_and_resumes_exactly(tiny_data, second_data):
    mixture = open_mixture(f"{tiny_data}=0.5,{second_data}=0.5")

    def loader():
        return MixtureLoader(mixture, seed=3, vocab_size=mixture.vocab_size)

    whole, halves, fours = loader(), [loader(), loader()], [loader() for _ in range(4)]
    lengths = (64, 16, 64, 16, 16)  # phase-1 and phase-2 rows
    batches = []
    for k, row_tokens in enumerate(lengths):
        if k == 2:
            saved = json.loads(json.dumps(whole.state_dict()))  # through JSON, as meta.json keeps it
        batches.append(whole.next_rows(8, row_tokens))
        # Two and four simulated ranks, each reading its contiguous share: together the same rows
        # (a rank's share of 2 rows often holds no row of one source), and the same state everywhere.
        for ranks in (halves, fours):
            w = 8 // len(ranks)
            shares = [r.next_rows(8, row_tokens, keep=slice(w * i, w * (i + 1))) for i, r in enumerate(ranks)]
            assert np.array_equal(batches[-1], np.concatenate(shares))
            assert all(r.state_dict() == whole.state_dict() for r in ranks)
    again = loader()
    again.load_state_dict(saved)
    for batch, row_tokens in zip(batches[2:], lengths[2:]):
        assert np.array_equal(again.next_rows(8, row_tokens), batch)
    assert again.state_dict() == whole.state_dict()


def test_validation_takes_each_sources_share(tiny_data, second_data):
    a, b = open_dataset(tiny_data), open_dataset(second_data)
    mixture = open_mixture(f"{tiny_data}=0.75,{second_data}=0.25")
    got = val_windows(mixture, 16, 1024)  # 64 windows: 48 from a, 16 from b
    assert np.array_equal(got, np.concatenate([val_windows(a, 16, 48 * 16), val_windows(b, 16, 16 * 16)]))
    # More than the splits hold: every share shrinks alike until the scarcer source's fits.
    have = [(d.val.num_tokens - 1) // 16 for d in (a, b)]
    n = int(min(have[0] / 0.75, have[1] / 0.25))
    k = round(0.75 * n)  # a's share
    big = val_windows(mixture, 16, 10**9)
    assert len(big) == n and k <= have[0] and n - k <= have[1] and min(have[0] - k, have[1] - (n - k)) <= 1
    assert np.array_equal(big[:k], val_windows(a, 16, k * 16))
    assert np.array_equal(big[k:], val_windows(b, 16, 10**9)[:n - k])


# ----------------------------------------------------------------------------- config and errors

@pytest.mark.parametrize("mix,needle", [
    ("a=x,b=1", "the weight of a is not a number: 'x'"),
    ("a=0.5;b=0.5", "a mixture needs at least 2 data directories, got 1"),  # one directory named "a=0.5;b"
    ("a=0.5,b", "'b' is not DIR=WEIGHT"),
    ("a=0.5,b=0", "the weight of b must be a finite number > 0, got 0"),
    ("a=0.5,b=nan", "the weight of b must be a finite number > 0, got nan"),
    ("a=1", "a mixture needs at least 2 data directories, got 1 (for one, use data.path)"),
    ("a=1,./a/=2", "./a/ appears twice"),
])
def test_bad_mix_syntax_is_named(mix, needle):
    cfg = Config(data=DataConfig(mix=mix))
    problems = [p for p in cfg.problems() if p.startswith("data.mix")]
    assert len(problems) == 1 and needle in problems[0], problems
    assert "write it as DIR=WEIGHT,DIR=WEIGHT" in problems[0]


def test_mix_alongside_path_or_mi_weights_is_refused():
    both = Config(data=DataConfig(path="x", mix="a=1,b=1")).problems()
    assert any("drop --data.path (data.mix names every directory)" in p for p in both), both
    mi = Config(data=DataConfig(mix="a=1,b=1"), tst=TSTSpec(weights="mi")).problems()
    assert any("tst.weights=mi" in p and "data.mix mixes several" in p for p in mi), mi
    assert parse_mix(" a=1 , b=3 ") == [("a", 1.0), ("b", 3.0)]


def superpose(*args):
    return subprocess.run([sys.executable, "-m", "superpose", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def test_mistakes_are_one_line_on_the_command_line(tiny_data, second_data, tmp_path):
    other = prepare(tmp_path / "other", [corpus.Source("x", "CC0", "gen", make_documents(300, 5))], vocab_size=300,
                    val_fraction=0.05, log=quiet)
    cases = [
        (["--data.mix", f"{tiny_data}:0.5,{second_data}=0.5"], [f"data.mix: '{tiny_data}:0.5' is not DIR=WEIGHT"]),
        (["--data.mix", f"{tiny_data}=1"], ["data.mix: a mixture needs at least 2 data directories"]),
        (["--data.mix", f"{tiny_data}=1,{other}=1"],
         [f"{other} was tokenized with another tokenizer (300 tokens) than {tiny_data} (320 tokens)",
          f"superpose prepare --tokenizer {tiny_data / 'tokenizer.json'}"]),
        (["--data.mix", f"{tiny_data}=1,{second_data}=1", "--data.path", str(tiny_data)], ["drop --data.path"]),
        (["--data.mix", f"{tiny_data}=1,{tmp_path / 'gone'}=1"],
         [f"data directory {tmp_path / 'gone'} does not exist"]),
    ]
    for flags, needles in cases:
        proc = superpose("train", "--preset", "cpu-smoke", "--out", tmp_path / "run", "--train.steps=1", *flags)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("superpose: error:"), proc.stderr
        assert all(needle in lines[0] for needle in needles), proc.stderr


# ----------------------------------------------------------------------------- training

@pytest.fixture(scope="module")
def sources(tiny_data, second_data, tmp_path_factory):
    """Copies of both sources (so a test may damage them) and the uninterrupted reference run."""
    root = tmp_path_factory.mktemp("mix")
    shutil.copytree(tiny_data, root / "a")
    shutil.copytree(second_data, root / "b")
    mix = f"{root / 'a'}=0.75,{root / 'b'}=0.25"
    logs = []
    build_trainer(mix_config(mix), root / "reference", log=logs.append).train(progress=False)
    return {"root": root, "mix": mix, "logs": logs}


def test_a_mixture_run_says_what_it_reads_and_evaluates_on_it(sources, tmp_path):
    run = sources["root"] / "reference"
    line = next(m for m in sources["logs"] if m.startswith("data: a mixture"))
    assert f"{sources['root'] / 'a'} weight 0.75" in line and "train tokens" in line
    recs = records(run)
    assert all(len(r["source_epochs"]) == 2 and r["epoch"] == max(r["source_epochs"]) for r in recs)
    assert recs[-1]["source_epochs"][1] > 0  # both sources were read
    summary = json.loads((run / "summary.json").read_text())
    assert summary["data_mix"] == f"{sources['root'] / 'a'}=0.75,{sources['root'] / 'b'}=0.25"
    # `superpose eval RUN` scores the run's own mixture: the trainer's numbers exactly.
    assert cli.main(["eval", str(run), "--json", str(tmp_path / "e.json")]) == 0
    got = json.loads((tmp_path / "e.json").read_text())
    assert (got["val_loss"], got["val_bpb"], got["data"]) == (summary["val_loss"], summary["val_bpb"],
                                                                 summary["data_mix"])
    assert got["val_tokens"] == 1024


def test_resume_is_bit_for_bit_and_refuses_other_data(sources, tmp_path):
    root, mix = sources["root"], sources["mix"]
    run = tmp_path / "run"
    t = build_trainer(mix_config(mix, checkpoint__every=5), run, log=quiet)
    t.begin(progress=False)
    while t.state.step < 5:
        t.step_once()
    t.save_checkpoint()
    t.step_once()  # done but not saved: its metrics line must not survive the resume
    t.metrics.close()
    stopped = tmp_path / "stopped"
    shutil.copytree(run, stopped)
    with pytest.raises(UserError, match="--data.mix cannot change"):
        resume_config(run, [f"--data.mix={root / 'a'}=0.5,{root / 'b'}=0.5"])
    resume_config(run, [f"--data.mix={mix}"])  # repeating the run's own mixture is no change
    run_training(resume_config(run), run, log=quiet, resume=True)
    ref = root / "reference"
    assert [r["step"] for r in records(run)] == list(range(STEPS))
    assert [r["loss"] for r in records(run)] == [r["loss"] for r in records(ref)]
    assert [r["source_epochs"] for r in records(run)] == [r["source_epochs"] for r in records(ref)]
    assert [e["val_loss"] for e in records(run, "eval")] == [e["val_loss"] for e in records(ref, "eval")]
    w, v = load_file(str(ref / "model.safetensors")), load_file(str(run / "model.safetensors"))
    assert all(torch.equal(w[k], v[k]) for k in w)
    # A source prepared again (other text, same tokenizer) is other data: refused in one line.
    b2 = prepare_like(tmp_path / "b2", root / "a", 300, seed=11)
    saved_b = tmp_path / "b-saved"
    shutil.move(root / "b", saved_b)
    try:
        shutil.copytree(b2, root / "b")
        with pytest.raises(UserError) as e:
            run_training(resume_config(stopped), stopped, log=quiet, resume=True)
    finally:
        shutil.rmtree(root / "b", ignore_errors=True)
        shutil.move(saved_b, root / "b")
    msg = str(e.value)
    a_tokens, b_tokens, b2_tokens = (open_dataset(d).train.num_tokens for d in (root / "a", root / "b", b2))
    assert "\n" not in msg and msg.endswith("resume on the run's own data"), msg
    assert (f"was trained on sources of {a_tokens:,} train tokens (weight 0.75), {b_tokens:,} train tokens (weight "
            f"0.25), the mixture {root / 'a'}=0.75,{root / 'b'}=0.25 has sources of {a_tokens:,} train tokens (weight "
            f"0.75), {b2_tokens:,}") in msg, msg


def test_ddp_over_two_processes_trains_the_single_process_model(sources, tmp_path):
    """The real user path, torchrun -m superpose train --parallel.mode=ddp, on the mixture: the
    losses of the in-process reference run (batch 4 over 2 ranks: a rank often holds no row of a
    source)."""
    ref = sources["root"] / "reference"
    rc, out = finish(torchrun(tmp_path / "ddp", mix_config(sources["mix"]), "--parallel.mode=ddp"))
    assert rc == 0, out[-3000:]
    want, got = records(ref), records(tmp_path / "ddp")
    assert [r["step"] for r in got] == list(range(STEPS))
    assert max_rel([r["loss"] for r in want], [r["loss"] for r in got]) < 1e-5
    assert [r["source_epochs"] for r in got] == [r["source_epochs"] for r in want]
    assert out.count("data: a mixture") == 1


def test_the_benchmark_runs_on_a_tiny_shape(tmp_path):
    """benchmarks/loader_mix.py on its default (two synthetic directories), tiny; no timings checked."""
    tiny = ["model.dim=32", "model.n_layers=1", "model.n_heads=2", "train.batch_size=2", "data.seq_len=16",
            "data.val_tokens=64", "train.threads=1"]
    out = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "loader_mix.py"), "--steps", "6", "--set",
                          *tiny], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "SUPERPOSE_CACHE": str(tmp_path), "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("phase 1 (s=4") == 2 and out.stdout.count("phase 2 (s=1") == 2, out.stdout
    assert "mixture: data time at most" in out.stdout
