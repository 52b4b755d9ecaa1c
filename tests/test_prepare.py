"""`superpose prepare` (data/prepare.py, data/split.py, data/journal.py): deterministic, whole
documents, resumable, and blind to how it batches its work.

What this adds to test_data.py (a prepared directory's shape, argument errors, a brought
tokenizer), test_formats.py (every format gives the same tokens; an interrupted prepare continued
by the same command ends in the same bytes) and test_reliability.py (leftovers of a killed
prepare are removed):
- two prepares of the same text, BPE training included, write the same bytes, meta.json too;
- every document lands in exactly one split, whole: train and validation together are the
  encoded documents, as a multiset, each with its end-of-text;
- the output does not depend on the encode batch size or the shard size (the pipelining and the
  journal granularity are implementation details);
- an interrupted prepare followed by *another* command (another seed) starts over and gives
  exactly what that command gives from scratch, never a mix of the two;
- the split rules of streamed sources at their edges (never zero held-out documents, a
  one-document source trains on it) and of in-memory sources (whole documents, never all);
- a streamed split continued from a journal point decides as one read from the start, and a
  resumed prepare keeps the held-out cap: it ends in the same bytes as an uninterrupted one;
- `ids_to_tokens` (the token layout: prefix, text, end-of-text) equals the obvious loop.

Run: .venv/bin/pytest tests/test_prepare.py
"""

import collections

import numpy as np
import pytest
from tokenizers import Tokenizer

from superpose.data import corpus, open_dataset, split
from superpose.data import prepare as prep
from superpose.data.prepare import prepare
from superpose.data.split import SplitSoFar, held_out_in_memory, split_stream
from superpose.data.tokenizer import ids_to_tokens
from superpose.errors import UserError

from conftest import make_documents

DOCS = make_documents(240, 11)


def quiet(_):
    pass


def sources(streamed=False):
    """Two sources of DOCS; streamed=True reads them as user files are read (an iterator)."""
    a, b = DOCS[:160], DOCS[160:]
    if streamed:
        return [corpus.Source("a", "CC0", "generated", lambda: iter(a)),
                corpus.Source("b", "CC0", "generated", lambda: iter(b))]
    return [corpus.Source("a", "CC0", "generated", list(a)), corpus.Source("b", "CC0", "generated", list(b))]


def files_of(d):
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.name != "mi.png"}


def documents(d):
    """Both splits of a data directory as token documents (each ends with its end-of-text)."""
    ds = open_dataset(d)
    out = []
    for stream in (ds.train, ds.val):
        tokens = stream.read(0, stream.num_tokens)
        ends = np.flatnonzero(tokens == ds.eot_id) + 1
        out += [tuple(x) for x in np.split(tokens, ends[:-1])]
    return out


def test_the_same_text_prepares_to_the_same_bytes(tmp_path):
    a = prepare(tmp_path / "a", sources(), vocab_size=300, val_fraction=0.1, log=quiet)
    b = prepare(tmp_path / "b", sources(), vocab_size=300, val_fraction=0.1, log=quiet)
    fa, fb = files_of(a), files_of(b)
    assert set(fa) == set(fb) and {"meta.json", "tokenizer.json", "train.docs.npy"} <= set(fa)
    for name in fa:
        assert fa[name] == fb[name], name
    # Another seed holds out other documents (the split is the seed's, not an accident of order).
    c = prepare(tmp_path / "c", sources(), vocab_size=300, val_fraction=0.1, seed=1, log=quiet)
    assert open_dataset(c).val.read(0, 50).tolist() != open_dataset(a).val.read(0, 50).tolist()


@pytest.mark.parametrize("streamed", [False, True], ids=["in-memory", "streamed"])
def test_every_document_lands_in_one_split_whole(tiny_data, tmp_path, streamed):
    out = prepare(tmp_path / "d", sources(streamed), tokenizer=tiny_data / "tokenizer.json", val_fraction=0.2,
                  log=quiet)
    ds = open_dataset(out)
    tok = Tokenizer.from_file(str(tiny_data / "tokenizer.json"))
    want = collections.Counter(tuple(e.ids) + (ds.eot_id,) for e in tok.encode_batch(DOCS, add_special_tokens=False))
    assert collections.Counter(documents(out)) == want
    meta = ds.meta["splits"]
    assert meta["train"]["documents"] + meta["val"]["documents"] == len(DOCS)
    assert meta["train"]["documents"] == len(ds.train_docs) and 0 < meta["val"]["documents"] < len(DOCS) // 2


def test_batching_and_shard_size_do_not_change_the_output(tiny_data, tmp_path, monkeypatch):
    ref = prepare(tmp_path / "ref", sources(True), tokenizer=tiny_data / "tokenizer.json", val_fraction=0.1, log=quiet)
    monkeypatch.setattr(prep, "ENCODE_BATCH", 7)  # 7 documents per encode call
    monkeypatch.setattr(prep, "PREPARE_SHARD_TOKENS", 1500)  # many train shards
    small = prepare(tmp_path / "small", sources(True), tokenizer=tiny_data / "tokenizer.json", val_fraction=0.1,
                    log=quiet)
    a, b = open_dataset(ref), open_dataset(small)
    assert len(a.meta["splits"]["train"]["shards"]) == 1 and len(b.meta["splits"]["train"]["shards"]) > 3
    assert np.array_equal(a.train.read(0, a.train.num_tokens), b.train.read(0, b.train.num_tokens))
    assert np.array_equal(a.val.read(0, a.val.num_tokens), b.val.read(0, b.val.num_tokens))
    assert np.array_equal(a.train_docs, b.train_docs)
    # Every train shard starts at a document start: a document is never cut between shards.
    bounds = np.cumsum([len(s) for s in b.train.shards])[:-1]
    assert set(bounds.tolist()) <= set(b.train_docs.tolist())


def test_an_interrupted_prepare_then_another_command_starts_over(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setattr(prep, "ENCODE_BATCH", 8)
    monkeypatch.setattr(prep, "PREPARE_SHARD_TOKENS", 1500)
    tok = tiny_data / "tokenizer.json"
    fresh = prepare(tmp_path / "fresh", sources(True), tokenizer=tok, val_fraction=0.1, seed=5, log=quiet)
    real, calls = prep.ShardWriter.end_shard, []

    def interrupt_after_two(self):
        real(self)
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(prep.ShardWriter, "end_shard", interrupt_after_two)
    with pytest.raises(UserError, match="run the same command again to continue"):
        prepare(tmp_path / "out", sources(True), tokenizer=tok, val_fraction=0.1, seed=0, log=quiet)
    assert (tmp_path / ".out.partial" / "journal.json").is_file()
    monkeypatch.setattr(prep.ShardWriter, "end_shard", real)
    logs = []
    out = prepare(tmp_path / "out", sources(True), tokenizer=tok, val_fraction=0.1, seed=5, log=logs.append)
    assert any("removed .out.partial" in m and "starting over" in m for m in logs), logs
    assert not any("continuing" in m for m in logs), logs
    fa, fb = files_of(fresh), files_of(out)
    assert set(fa) == set(fb)
    for name in fa:
        assert fa[name] == fb[name], name
    assert not list(tmp_path.glob(".*"))


def test_streamed_split_edges():
    def src(docs):
        return corpus.Source("s", "x", "x", lambda: iter(docs))

    five = [f"document {i}" for i in range(5)]
    # A fraction so small no hash falls under it: the last document is held out all the same.
    held = [h for _, _, h in split_stream(src(five), 0, 1e-12, seed=0)]
    assert held == [False] * 4 + [True]
    # A fraction so large every hash falls under it: the last document trains all the same.
    held = [h for _, _, h in split_stream(src(five), 0, 1 - 1e-12, seed=0)]
    assert held == [True] * 4 + [False]
    # One document trains; it is not held out even when the rule would.
    assert [h for _, _, h in split_stream(src(["only"]), 0, 1 - 1e-12, seed=0)] == [False]
    # Continuing from document k, told how the documents before it were split (as a resumed
    # prepare's journal tells it), gives the same decisions as reading from the start.
    for seed, fraction in ((3, 0.5), (0, 1e-12), (0, 1 - 1e-12)):
        full = list(split_stream(src(five), 0, fraction, seed=seed))
        for k in range(5):
            held = [d for _, d, h in full[:k] if h]
            before = SplitSoFar(sum(map(len, held)), len(held), k - len(held))
            assert list(split_stream(src(five), 0, fraction, seed=seed, skip=k, before=before)) == full[k:], (seed, k)


@pytest.mark.parametrize("n,fraction", [(2, 0.9), (3, 0.01), (50, 0.2), (50, 0.999)])
def test_in_memory_split_is_whole_documents_never_all(n, fraction):
    docs = [("word " * (i % 7 + 1)).strip() for i in range(n)]
    held = held_out_in_memory(docs, fraction, seed=0, k=0, name="x")
    assert 1 <= len(held) < n
    chars = sum(map(len, docs))
    held_chars = sum(len(docs[i]) for i in held)
    # At least the fraction, unless only "all but one" stopped it.
    assert held_chars >= fraction * chars or len(held) == n - 1
    # No more than needed: without the document added last it would be short of the fraction.
    assert any(held_chars - len(docs[i]) < fraction * chars for i in held) or len(held) == 1
    # Deterministic: a resumed prepare holds out the same documents.
    assert held == held_out_in_memory(docs, fraction, seed=0, k=0, name="x")


@pytest.mark.parametrize("prefix", [[], [7], [7, 8]])
def test_token_layout_is_prefix_text_end_of_text(prefix):
    ids = [[5, 6, 9], [], [4], [3, 3, 3, 3]]
    flat, lens = ids_to_tokens(ids, eot_id=1, prefix=prefix)
    want = [t for doc in ids for t in prefix + doc + [1]]
    assert flat.tolist() == want and lens.tolist() == [len(prefix) + len(d) + 1 for d in ids]


def test_a_resumed_prepare_keeps_the_held_out_cap(tiny_data, tmp_path, monkeypatch):
    """The held-out cap (VAL_MAX_BYTES per streamed source) must count what was held out before an
    interruption too (the journal's per-source counts carry it, split.SplitSoFar). Here the cap is
    a few documents' worth, reached before the interruption."""
    monkeypatch.setattr(split, "VAL_MAX_BYTES", 400)
    monkeypatch.setattr(prep, "ENCODE_BATCH", 8)
    monkeypatch.setattr(prep, "PREPARE_SHARD_TOKENS", 1500)
    tok = tiny_data / "tokenizer.json"
    straight = prepare(tmp_path / "straight", sources(True), tokenizer=tok, val_fraction=0.3, log=quiet)
    real, calls = prep.ShardWriter.end_shard, []

    def interrupt_after_three(self):
        real(self)
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(prep.ShardWriter, "end_shard", interrupt_after_three)
    with pytest.raises(UserError, match="run the same command again to continue"):
        prepare(tmp_path / "again", sources(True), tokenizer=tok, val_fraction=0.3, log=quiet)
    monkeypatch.setattr(prep.ShardWriter, "end_shard", real)
    logs = []
    again = prepare(tmp_path / "again", sources(True), tokenizer=tok, val_fraction=0.3, log=logs.append)
    assert any("continuing an interrupted prepare" in m for m in logs), logs  # it did resume
    a, b = open_dataset(straight), open_dataset(again)
    assert a.meta["splits"] == b.meta["splits"]
    assert np.array_equal(a.train.read(0, a.train.num_tokens), b.train.read(0, b.train.num_tokens))
    # The cap bit: without it far more than 400 characters per source would be held out.
    assert all(s["val_characters"] < 400 + max(map(len, DOCS)) for s in a.meta["sources"])
    fa, fb = files_of(straight), files_of(again)
    assert set(fa) == set(fb)
    for name in fa:
        assert fa[name] == fb[name], name
