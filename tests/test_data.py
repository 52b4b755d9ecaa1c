"""Shards, the held-out split, the shuffled loader (no repeats, carried position) and bytes/token.

Run: .venv/bin/pytest tests/test_data.py
"""

import json
import re

import numpy as np
import pytest
from tokenizers import Tokenizer

from superpose.data import corpus
from superpose.data import TrainLoader, open_dataset, token_byte_lengths, val_windows
from superpose.data.shards import HEADER, ShardWriter, TokenStream, open_shard
from superpose.errors import UserError
from superpose.data.prepare import prepare

from conftest import tiny_sources


def test_shards_roundtrip_across_files(tmp_path):
    w = ShardWriter(tmp_path, "x", np.dtype(np.uint16), shard_tokens=10)
    data = np.arange(35) % 300
    w.write(data[:7])
    w.write(data[7:])
    paths = w.close()
    assert len(paths) == 4
    stream = TokenStream(paths)
    assert stream.num_tokens == 35
    assert np.array_equal(stream.read(0, 35), data)
    assert np.array_equal(stream.read(8, 15), data[8:23])


@pytest.mark.parametrize("damage,needle", [
    (lambda b: b[:HEADER.size - 1], "truncated (no header)"),
    (lambda b: b"NOTSHARD" + b[8:], "bad magic"),
    (lambda b: b[:-2], "truncated or corrupt"),
])
def test_corrupt_shards_are_refused(tmp_path, damage, needle):
    w = ShardWriter(tmp_path, "x", np.dtype(np.uint16))
    w.write(np.arange(10))
    path, = w.close()
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(UserError, match=re.escape(needle)) as e:
        open_shard(path)
    assert str(path) in str(e.value)


def test_prepared_directory(tiny_data):
    ds = open_dataset(tiny_data)
    meta = ds.meta
    assert meta["vocab_size"] == 320 and ds.eot_id == 0
    # Held-out whole documents from both sources, roughly 5% of each.
    for src in meta["sources"]:
        assert src["val_documents"] >= 1
        assert 0.04 < src["val_characters"] / src["characters"] < 0.15
    assert meta["splits"]["train"]["documents"] + meta["splits"]["val"]["documents"] == 900
    # Every document ends with end-of-text, and the doc index points right after each one.
    starts = ds.train_docs
    assert len(starts) == meta["splits"]["train"]["documents"] and starts[0] == 0
    tokens = ds.train.read(0, ds.train.num_tokens)
    assert np.array_equal(np.flatnonzero(tokens == ds.eot_id) + 1, np.append(starts[1:], ds.train.num_tokens))
    # The validation text never appears in train (held out whole).
    tok = Tokenizer.from_file(str(ds.tokenizer_path))
    val_text = tok.decode(ds.val.read(0, 200).tolist())
    first_val_doc = val_text.split("<|endoftext|>")[0][:60]
    assert first_val_doc not in tok.decode(tokens.tolist())


def test_long_document_share_counts_the_tokens_of_documents_longer_than_a_step():
    """Documents of 10, 100 and 1,000 tokens: a 50-token step reads inside the two long ones."""
    class Stream:
        num_tokens = 1110

    loader = TrainLoader(Stream(), np.array([0, 10, 110]), seed=0, vocab_size=16)
    assert loader.long_document_share(50) == pytest.approx(1100 / 1110)
    assert loader.long_document_share(100) == pytest.approx(1000 / 1110)  # longer than, not as long as
    assert loader.long_document_share(1000) == 0.0


def test_loader_never_repeats_within_an_epoch(tiny_data):
    ds = open_dataset(tiny_data)
    loader = TrainLoader(ds.train, ds.train_docs, seed=3, vocab_size=ds.vocab_size)
    covered = np.zeros(ds.train.num_tokens, dtype=np.int64)
    # Mix phase-1 rows (s*L = 64) and phase-2 rows (L = 16) as a TST run does.
    sizes = [64] * 40 + [16] * 10_000
    seen_positions = []
    for n in sizes:
        if loader.epoch > 0:
            break
        pos = loader.position
        loader.next_rows(1, n)
        if loader.epoch == 0:
            seen_positions.append((pos, n))
    # Map virtual positions back to stream offsets and count each input token once.
    loader2 = TrainLoader(ds.train, ds.train_docs, seed=3, vocab_size=ds.vocab_size)
    loader2._order()
    for pos, n in seen_positions:
        i = np.searchsorted(loader2._cum, np.arange(pos, pos + n), side="right") - 1
        covered[loader2._starts[i] + (np.arange(pos, pos + n) - loader2._cum[i])] += 1
    assert covered.max() == 1
    assert covered.sum() > 0.99 * ds.train.num_tokens - 64


def test_loader_is_deterministic_and_resumable(tiny_data):
    ds = open_dataset(tiny_data)
    a = TrainLoader(ds.train, ds.train_docs, seed=1, vocab_size=ds.vocab_size)
    b = TrainLoader(ds.train, ds.train_docs, seed=1, vocab_size=ds.vocab_size)
    c = TrainLoader(ds.train, ds.train_docs, seed=2, vocab_size=ds.vocab_size)
    x = a.next_rows(4, 48)
    assert x.shape == (4, 49)
    assert np.array_equal(x, b.next_rows(4, 48))
    assert not np.array_equal(x, c.next_rows(4, 48))
    # Rows are consecutive: the label token of a row is the first input of the next.
    assert np.array_equal(x[:-1, -1], x[1:, 0])
    # Run across an epoch boundary, save, restore, continue: identical rows.
    for _ in range(700):
        a.next_rows(4, 48)
    assert a.epoch >= 1
    state = json.loads(json.dumps(a.state_dict()))
    d = TrainLoader(ds.train, ds.train_docs, seed=0, vocab_size=ds.vocab_size)
    d.load_state_dict(state)
    assert np.array_equal(a.next_rows(3, 16), d.next_rows(3, 16))
    assert a.epoch_progress == d.epoch_progress and a.epoch_progress > 1


def test_loader_rejects_tokens_outside_vocab(tiny_data):
    ds = open_dataset(tiny_data)
    loader = TrainLoader(ds.train, ds.train_docs, seed=0, vocab_size=100)
    with pytest.raises(UserError, match="outside the model's vocabulary"):
        loader.next_rows(8, 64)


def test_row_longer_than_corpus(tiny_data):
    ds = open_dataset(tiny_data)
    loader = TrainLoader(ds.train, ds.train_docs, seed=0, vocab_size=ds.vocab_size)
    with pytest.raises(UserError, match="fewer than one row"):
        loader.next_rows(1, ds.train.num_tokens)


def test_val_windows_and_token_bytes(tiny_data):
    ds = open_dataset(tiny_data)
    w = val_windows(ds, 16, 100)
    assert w.shape == (6, 17)
    assert np.array_equal(w[0, -1], w[1, 0]) and np.array_equal(w.reshape(-1)[:17], ds.val.read(0, 17))
    tok = Tokenizer.from_file(str(ds.tokenizer_path))
    nbytes = token_byte_lengths(tok, ds.vocab_size)
    assert nbytes[ds.eot_id] == 0
    ids = ds.val.read(0, 500)
    text = tok.decode([i for i in ids.tolist() if i != ds.eot_id])
    assert nbytes[ids].sum() == len(text.encode("utf-8"))


def test_prepare_errors(tmp_path, tiny_data):
    with pytest.raises(UserError, match="already holds a prepared data set"):
        prepare(tiny_data, tiny_sources(), vocab_size=320, log=lambda m: None)
    one = [corpus.Source("solo", "x", "x", ["just one document"])]
    with pytest.raises(UserError, match="single document"):
        prepare(tmp_path / "d", one, vocab_size=300, log=lambda m: None)
    with pytest.raises(UserError, match="does not exist"):
        prepare(tmp_path / "e", tiny_sources(), tokenizer=tmp_path / "missing.json", log=lambda m: None)
    with pytest.raises(UserError, match="no meta.json"):
        open_dataset(tmp_path)
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temp dirs left behind


def test_bring_your_own_tokenizer(tmp_path, tiny_data):
    out = prepare(tmp_path / "byo", tiny_sources(), tokenizer=tiny_data / "tokenizer.json", val_fraction=0.05,
                  log=lambda m: None)
    a, b = open_dataset(out), open_dataset(tiny_data)
    assert a.vocab_size == b.vocab_size and np.array_equal(a.val.read(0, 100), b.val.read(0, 100))
