"""The data directory's on-disk format (data/shards.py): what a shard and a directory promise.

What this adds to test_data.py (a roundtrip across files; a truncated header, bad magic or
short body refused) and test_cli.py (a corrupt shard named on the command line):
- a shard round-trips its header (magic, version, bytes per token, count) and its tokens, at both
  widths, the largest id of each width included; the width switches exactly past 65,536 tokens;
- a shard that was never closed (a crash mid-write) reads as corrupt: the count goes in last;
- keep_open shards end only where the writer is told (document boundaries), and a resumed writer
  continues the numbering and the token count;
- a stream of shards (empty ones included) reads every span as the concatenation does;
- shards are memory maps (read-only), not copies;
- open_dataset refuses, in one line naming the file, every other way a directory can be broken;
- meta.json is written and read here only (`publish`, `read_meta`): its fields in their order,
  and a directory prepared before the integrity record (or prefix_ids) existed still opens.

Run: .venv/bin/pytest tests/test_shards.py
"""

import json
import shutil

import numpy as np
import pytest

from superpose.data import open_dataset
from superpose.data.shards import (HEADER, MAGIC, SHARD_VERSION, DataMeta, ShardWriter, TokenStream, is_prepared,
                                   open_shard, publish, read_meta, recorded_vocab_size, token_dtype)
from superpose.errors import UserError


def one_line(excinfo, *needles):
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    for needle in needles:
        assert needle in msg, msg


@pytest.mark.parametrize("vocab_size", [320, 1 << 16, (1 << 16) + 1, 1 << 20])
def test_a_shard_round_trips_its_header_and_tokens_at_both_widths(tmp_path, vocab_size):
    dtype = token_dtype(vocab_size)
    assert dtype == (np.uint16 if vocab_size <= 1 << 16 else np.uint32)  # ids 0..65535 fit in 2 bytes
    tokens = np.array([0, 1, vocab_size // 2, vocab_size - 1, 0, vocab_size - 1], dtype=np.int64)
    w = ShardWriter(tmp_path, "t", dtype)
    w.write(tokens)
    path, = w.close()
    raw = path.read_bytes()
    assert HEADER.size == 32 and len(raw) == HEADER.size + len(tokens) * dtype.itemsize
    assert HEADER.unpack(raw[:HEADER.size]) == (MAGIC, SHARD_VERSION, dtype.itemsize, len(tokens))
    assert raw[HEADER.size - 8:HEADER.size] == b"\0" * 8  # the reserved bytes
    got = open_shard(path)
    assert got.dtype == dtype and np.array_equal(got.astype(np.int64), tokens)


def test_a_shard_that_was_never_closed_reads_as_corrupt(tmp_path):
    """The header's count is written when the shard is closed: a process killed while writing
    leaves a shard whose size does not match its count, never one that silently reads short."""
    w = ShardWriter(tmp_path, "t", np.dtype(np.uint16))
    w.write(np.arange(20_000) % 300)  # more than a file buffer: the header and tokens reach the disk
    path = w.paths[0]
    w._file.flush()
    with pytest.raises(UserError) as e:
        open_shard(path)
    one_line(e, str(path), "truncated or corrupt", "header says 0 tokens", "re-run superpose prepare")
    w.close()
    assert len(open_shard(path)) == 20_000


def test_keep_open_shards_end_only_where_told_and_a_resumed_writer_continues(tmp_path):
    w = ShardWriter(tmp_path, "train", np.dtype(np.uint16), shard_tokens=10)
    w.write(np.arange(7), keep_open=True)
    assert not w.full()
    w.write(np.arange(7, 25), keep_open=True)  # past shard_tokens: one document is never cut
    assert w.full() and len(w.paths) == 1
    w.end_shard()
    w.write(np.arange(25, 28), keep_open=True)
    paths = w.close()
    assert [p.name for p in paths] == ["train-00000.bin", "train-00001.bin"]
    assert [len(open_shard(p)) for p in paths] == [25, 3] and w.total == 28
    # An interrupted prepare continues after its finished shards: numbering and total carry on.
    r = ShardWriter(tmp_path, "train", np.dtype(np.uint16), shard_tokens=10, first_index=2, total=28)
    r.write(np.arange(28, 40))
    paths = r.close()
    assert [p.name for p in paths] == [f"train-{i:05d}.bin" for i in range(4)] and r.total == 40
    assert np.array_equal(TokenStream(paths).read(0, 40), np.arange(40))


def test_a_stream_reads_every_span_as_the_concatenation(tmp_path):
    sizes = [3, 0, 5, 1, 0, 4]  # empty shards (a header, no tokens) are legal and skipped over
    data = np.arange(sum(sizes)) * 7 % 65_536
    paths, at = [], 0
    for i, n in enumerate(sizes):
        path = tmp_path / f"s-{i:05d}.bin"
        path.write_bytes(HEADER.pack(MAGIC, SHARD_VERSION, 2, n) + data[at:at + n].astype("<u2").tobytes())
        paths.append(path)
        at += n
    stream = TokenStream(paths)
    assert stream.num_tokens == len(data)
    for start in range(len(data) + 1):
        for n in range(len(data) - start + 1):
            got = stream.read(start, n)
            assert got.dtype == np.int64 and np.array_equal(got, data[start:start + n]), (start, n)


def test_shards_are_read_only_memory_maps(tmp_path):
    w = ShardWriter(tmp_path, "t", np.dtype(np.uint16))
    w.write(np.arange(100))
    got = open_shard(w.close()[0])
    assert isinstance(got, np.memmap) and got.offset == HEADER.size
    with pytest.raises(ValueError):
        got[0] = 1


@pytest.mark.parametrize("version,itemsize,needle", [(2, 2, "has format v2 with 2-byte tokens"),
                                                      (1, 3, "has format v1 with 3-byte tokens")])
def test_a_shard_of_another_version_or_width_is_refused(tmp_path, version, itemsize, needle):
    path = tmp_path / "t-00000.bin"
    path.write_bytes(HEADER.pack(MAGIC, version, itemsize, 2) + b"\0" * (2 * itemsize))
    with pytest.raises(UserError) as e:
        open_shard(path)
    one_line(e, str(path), needle, "re-run superpose prepare")


def _meta(d, change):
    meta = json.loads((d / "meta.json").read_text())
    change(meta)
    (d / "meta.json").write_text(json.dumps(meta))


BROKEN = {
    "meta-not-json": (lambda d: (d / "meta.json").write_text("{"), "meta.json is corrupt"),
    "meta-without-splits": (lambda d: _meta(d, lambda m: m.pop("splits")), "meta.json is corrupt"),
    "data-format": (lambda d: _meta(d, lambda m: m.update(format_version=99)), "has data format v99, this superpose reads v1 or v2"),
    "no-tokenizer": (lambda d: (d / "tokenizer.json").unlink(), "has no tokenizer.json"),
    # meta.json's record of every data file (issue 22 item 5) names a missing one before any reader.
    "no-doc-index": (lambda d: (d / "train.docs.npy").unlink(), "train.docs.npy is missing"),
    "missing-shard": (lambda d: (d / "val-00000.bin").unlink(), "val-00000.bin is missing"),
    "empty-val": (lambda d: _meta(d, lambda m: m["splits"]["val"].update(shards=[])), "has an empty val split"),
    "a-file": (lambda d: (shutil.rmtree(d), d.write_text("x")), "is a file: not a prepared data directory"),
}


@pytest.mark.parametrize("kind", list(BROKEN))
def test_a_broken_data_directory_is_refused_in_one_line(tiny_data, tmp_path, kind):
    d = tmp_path / "data"
    shutil.copytree(tiny_data, d)
    open_dataset(d)  # intact, it opens
    damage, needle = BROKEN[kind]
    damage(d)
    with pytest.raises(UserError) as e:
        open_dataset(d)
    one_line(e, str(d), needle)


def test_data_prepared_before_prefix_ids_were_recorded_has_none(tiny_data, tmp_path):
    d = tmp_path / "data"
    shutil.copytree(tiny_data, d)
    _meta(d, lambda m: m.pop("prefix_ids"))
    ds = open_dataset(d)
    assert ds.prefix_ids == [] and ds.eot_id == 0 and ds.vocab_size == 320
    assert ds.tokenizer_path == d / "tokenizer.json"


def test_meta_json_holds_its_fields_in_order(tiny_data):
    """The data directory's format: format_version, DataMeta's fields, then the integrity record."""
    meta = json.loads((tiny_data / "meta.json").read_text())
    assert list(meta) == ["format_version", *DataMeta.__dataclass_fields__, "tokenizer_sha256", "files"]
    assert read_meta(tiny_data) == meta and recorded_vocab_size(tiny_data) == meta["vocab_size"] == 320
    assert set(meta["files"]) == {*meta["splits"]["train"]["shards"], *meta["splits"]["val"]["shards"],
                                  "train.docs.npy"}


def test_publish_writes_what_open_dataset_reads(tiny_data, tmp_path):
    """A directory written with publish (what both prepares call) round-trips through open_dataset."""
    partial, out = tmp_path / ".d.partial", tmp_path / "d"
    shutil.copytree(tiny_data, partial)
    meta = json.loads((partial / "meta.json").read_text())
    (partial / "meta.json").unlink()
    (partial / "mi.json").unlink(missing_ok=True)
    fields = {k: meta[k] for k in DataMeta.__dataclass_fields__}
    out.mkdir()  # an empty output is replaced
    assert not is_prepared(out)
    publish(partial, out, DataMeta(**fields))
    assert is_prepared(out) and not partial.exists()
    assert (out / "meta.json").read_text() == (tiny_data / "meta.json").read_text()  # the same bytes
    ds = open_dataset(out)
    assert ds.vocab_size == 320 and ds.train.num_tokens == open_dataset(tiny_data).train.num_tokens


def test_unreadable_meta_has_no_recorded_vocab_size(tiny_data, tmp_path):
    assert recorded_vocab_size(tmp_path / "nowhere") is None
    d = tmp_path / "data"
    shutil.copytree(tiny_data, d)
    (d / "meta.json").write_text("[1, 2]")
    assert recorded_vocab_size(d) is None
    with pytest.raises(UserError) as e:
        read_meta(d)
    one_line(e, str(d / "meta.json"), "is corrupt", "re-run superpose prepare")


def test_data_prepared_before_the_integrity_record_still_opens(tiny_data, tmp_path):
    d = tmp_path / "data"
    shutil.copytree(tiny_data, d)
    _meta(d, lambda m: (m.pop("files"), m.pop("tokenizer_sha256"), m.update(format_version=1)))  # as it was then
    assert open_dataset(d).train.num_tokens == open_dataset(tiny_data).train.num_tokens
