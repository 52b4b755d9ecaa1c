"""The on-disk format of a data directory, and opening one.

A data directory (made by `superpose prepare`) holds:

    meta.json              format version, vocabulary, end-of-text id, sources, split sizes
    tokenizer.json         a `tokenizers` tokenizer (byte-level BPE unless the user brought one)
    train-00000.bin ...    token shards: a 32-byte header, then the tokens (uint16 or uint32)
    train.docs.npy         int64 start offset of every document in the train stream
    val-00000.bin ...      held-out whole documents, already in a fixed shuffled order

Shard header, little-endian: magic b"SUPERPOS", u32 format version, u32 bytes per token,
u64 token count, 8 reserved bytes. Shards are read with `np.memmap`, so a 10 GB corpus costs
no more memory than 10 MB. Each document ends with the end-of-text token.

This module alone writes and reads meta.json (`publish`, `read_meta`): its fields are `DataMeta`'s
after the format version, then the integrity record (`integrity_record`) checked on every open.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError, notice
from ..files import file_record, fsync_path, sha256_file

MAGIC = b"SUPERPOS"
SHARD_VERSION = 1
HEADER = struct.Struct("<8sIIQ8x")  # magic, version, bytes per token, count, reserved
DATA_FORMAT_VERSION = 2
# Version 1 directories were prepared before (or while) meta.json recorded the tokenizer and the
# data files: still read, checked where they carry the record and said to be unchecked where they
# do not. A version-2 meta.json without its record is damage and fails closed.
READ_VERSIONS = (1, DATA_FORMAT_VERSION)
SHARD_TOKENS = 1 << 28  # tokens per shard file (512 MiB of uint16)


# ----------------------------------------------------------------------------- shards

def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


class ShardWriter:
    """Append tokens to `{prefix}-NNNNN.bin` shards of at most `shard_tokens` tokens each."""

    def __init__(self, directory: Path, prefix: str, dtype: np.dtype, shard_tokens: int = SHARD_TOKENS,
                 first_index: int = 0, total: int = 0):
        """first_index, total: continue after `first_index` finished shards holding `total` tokens
        (an interrupted prepare resumed); their paths are listed as if written here."""
        self.directory, self.prefix, self.dtype, self.shard_tokens = directory, prefix, dtype, shard_tokens
        self.paths: list[Path] = [directory / f"{prefix}-{i:05d}.bin" for i in range(first_index)]
        self.total = total
        self._file = None
        self._count = 0

    def _open(self) -> None:
        path = self.directory / f"{self.prefix}-{len(self.paths):05d}.bin"
        self._file = open(path, "wb")
        self._file.write(HEADER.pack(MAGIC, SHARD_VERSION, self.dtype.itemsize, 0))
        self.paths.append(path)
        self._count = 0

    def _close(self) -> None:
        # The count goes into the header last, so a shard cut short by a crash reads as corrupt.
        self._file.seek(0)
        self._file.write(HEADER.pack(MAGIC, SHARD_VERSION, self.dtype.itemsize, self._count))
        self._file.close()
        self._file = None

    def write(self, tokens: np.ndarray, keep_open: bool = False) -> None:
        """Append tokens. keep_open=True writes them all into the current shard, however full
        (shards then end only where `end_shard` is called: at document boundaries)."""
        tokens = tokens.astype(self.dtype, copy=False)
        if keep_open:
            if self._file is None:
                self._open()
            self._file.write(tokens.tobytes())
            self._count += len(tokens)
            self.total += len(tokens)
            return
        while len(tokens):
            if self._file is None:
                self._open()
            take = min(len(tokens), self.shard_tokens - self._count)
            self._file.write(tokens[:take].tobytes())
            self._count += take
            self.total += take
            tokens = tokens[take:]
            if self._count == self.shard_tokens:
                self._close()

    def full(self) -> bool:
        return self._count >= self.shard_tokens

    def end_shard(self) -> None:
        if self._file is not None:
            self._close()

    def close(self) -> list[Path]:
        if self._file is not None:
            self._close()
        return self.paths


def open_shard(path: Path) -> np.memmap:
    """Memory-map one shard's tokens, refusing anything that is not a complete shard."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(HEADER.size)
    except OSError as e:
        raise UserError(f"cannot read token shard {path}: {e.strerror}; re-run superpose prepare") from None
    if len(head) < HEADER.size:
        raise UserError(f"token shard {path} is truncated (no header); re-run superpose prepare")
    magic, version, itemsize, count = HEADER.unpack(head)
    if magic != MAGIC:
        raise UserError(f"{path} is not a superpose token shard (bad magic); re-run superpose prepare")
    if version != SHARD_VERSION or itemsize not in (2, 4):
        raise UserError(f"token shard {path} has format v{version} with {itemsize}-byte tokens; "
                        f"this superpose reads v{SHARD_VERSION}: re-run superpose prepare")
    if size != HEADER.size + count * itemsize:
        raise UserError(f"token shard {path} is truncated or corrupt ({size} bytes, header says {count} tokens);"
                        " re-run superpose prepare")
    dtype = np.uint16 if itemsize == 2 else np.uint32
    if count == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=HEADER.size, shape=(count,))


class TokenStream:
    """The concatenation of a split's shards, read by global token offset."""

    def __init__(self, paths: list[Path]):
        self.shards = [open_shard(p) for p in paths]
        sizes = [len(s) for s in self.shards]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)  # (n_shards + 1,)
        self.num_tokens = int(self.offsets[-1])

    def read(self, start: int, n: int) -> np.ndarray:
        """Tokens [start, start + n) as int64."""
        assert 0 <= start and start + n <= self.num_tokens, (start, n, self.num_tokens)
        out = np.empty(n, dtype=np.int64)
        i = int(np.searchsorted(self.offsets, start, side="right")) - 1
        filled = 0
        while filled < n:
            lo = start + filled - int(self.offsets[i])
            take = min(n - filled, len(self.shards[i]) - lo)
            out[filled:filled + take] = self.shards[i][lo:lo + take]
            filled += take
            i += 1
        return out


# ----------------------------------------------------------------------------- data directory

@dataclass
class Dataset:
    """An opened data directory."""

    path: Path
    meta: dict
    train: TokenStream
    train_docs: np.ndarray  # int64 document start offsets in the train stream
    val: TokenStream

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    @property
    def eot_id(self) -> int:
        return int(self.meta["eot_id"])

    @property
    def prefix_ids(self) -> list[int]:
        """The special tokens before each document (a BOS template's); [] for data prepared before
        superpose recorded them, which had none."""
        return [int(i) for i in self.meta.get("prefix_ids", [])]

    @property
    def tokenizer_path(self) -> Path:
        return self.path / "tokenizer.json"

    @property
    def spec(self) -> str:
        """How logs, reports and summaries name the data: its directory."""
        return str(self.path)

    @property
    def described(self) -> str:
        return f"the data in {self.path}"

    def fingerprint(self) -> dict:
        """What a resumed run checks its data against: the vocabulary and the train split."""
        return {"vocab_size": self.vocab_size, "tokenizer_sha256": sha256_file(self.tokenizer_path),
                "train_tokens": self.train.num_tokens, "val_tokens": self.val.num_tokens}

    def summary(self) -> dict:
        """summary.json's name of the data."""
        return {"data_dir": str(self.path)}

    def sources_line(self) -> str | None:
        """A start-of-run line about the sources of a mixture; one directory has none."""
        return None

    def loader(self, seed: int, vocab_size: int):
        """The training rows: a `TrainLoader` over the train split."""
        from .loader import TrainLoader

        return TrainLoader(self.train, self.train_docs, seed=seed, vocab_size=vocab_size)

    def val_windows(self, seq_len: int, val_tokens: int) -> np.ndarray:
        """(N, seq_len + 1) consecutive windows from the start of the held-out split, stride
        seq_len, covering min(val_tokens, what the split has) targets."""
        n = min(val_tokens, self.val.num_tokens - 1) // seq_len
        if n < 1:
            raise UserError(f"the validation split has {self.val.num_tokens} tokens, fewer than one row of "
                            f"{seq_len + 1}; prepare with more text or a larger --val-fraction")
        flat = self.val.read(0, n * seq_len + 1)
        idx = np.arange(n)[:, None] * seq_len + np.arange(seq_len + 1)[None, :]
        return flat[idx]


VERIFY_SHARD_BYTES = 1 << 30  # shards up to this size in all are sha256-checked on every open (about a second)


# ----------------------------------------------------------------------------- meta.json

META = "meta.json"


@dataclass
class DataMeta:
    """What a prepare records about a data directory, in the order meta.json holds it (after
    format_version; the integrity record follows)."""

    vocab_size: int
    eot_id: int
    eot_token: str
    prefix_ids: list[int]  # the special tokens before each document (a BOS template's)
    token_bytes: int  # 2 or 4: the shards' token width
    tokenizer: str  # "tokenizer.json" (trained by prepare) or the path of the tokenizer brought
    seed: int
    val_fraction: float
    splits: dict  # {"train" | "val": {"shards": [file names], "documents", "tokens", "bytes"}}
    sources: list[dict]  # per source: name, license, credit and its document counts


def is_prepared(path: Path) -> bool:
    """Whether `path` holds a finished data directory (meta.json is written last, before the rename)."""
    return (Path(path) / META).is_file()


def publish(partial: Path, out: Path, meta: DataMeta, before_rename: Callable[[Path], None] | None = None) -> None:
    """Finish the data directory written into `partial`: meta.json with the integrity record of
    every file it names, `before_rename(partial)` (what else goes with the data: mi.json), everything
    fsynced, then renamed to `out` (which is absent or empty)."""
    record = {"format_version": DATA_FORMAT_VERSION, **asdict(meta), **integrity_record(partial, meta.splits)}
    (partial / META).write_text(json.dumps(record, indent=2) + "\n")
    if before_rename is not None:
        before_rename(partial)
    for f in partial.iterdir():  # on the disk before the rename makes the directory visible
        fsync_path(f)
    fsync_path(partial)
    if out.exists():
        out.rmdir()  # empty, checked before the prepare began
    os.replace(partial, out)
    fsync_path(out.parent)


def read_meta(path: Path) -> dict:
    """A data directory's meta.json, its format version and splits checked; a missing directory
    or meta.json, a corrupt one or another format version is a one-line UserError."""
    meta_path = path / META
    if not meta_path.is_file():
        raise UserError(_not_prepared(path))
    try:
        meta = json.loads(meta_path.read_text())
        version = meta["format_version"]
        for split in ("train", "val"):  # what every reader needs
            if not isinstance(meta["splits"][split]["shards"], list):
                raise TypeError(f"splits.{split}.shards is not a list")
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise UserError(f"{meta_path} is corrupt ({e}); re-run superpose prepare") from None
    if version not in READ_VERSIONS or isinstance(version, bool):
        raise UserError(f"{path} has data format v{version}, this superpose reads "
                        f"{' or '.join(f'v{v}' for v in READ_VERSIONS)}; re-run superpose prepare")
    return meta


def _not_prepared(path: Path) -> str:
    """Why `path` is not a data directory, with the prepare command that makes one: the user's
    text as --text and a new folder beside it as --out, never their text as --out."""
    from .corpus import data_dir_for, is_text, prepare_command

    if not path.exists():
        return f"data directory {path} does not exist; create it from your text with: {prepare_command(out=path)}"
    if is_text(path):
        what = "is a file" if path.is_file() else "holds text files and no meta.json"
        return (f"{path} {what}: not a prepared data directory; if that is your text, prepare it with: "
                f"{prepare_command(path, data_dir_for(path))}")
    return (f"{path} is not a prepared data directory (no meta.json); create one from your text with: "
            f"{prepare_command()}")


def recorded_vocab_size(path: Path) -> int | None:
    """The vocabulary size a data directory's meta.json records; None when it cannot be read
    (opening the directory says why)."""
    try:
        return json.loads((Path(path) / META).read_text())["vocab_size"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def integrity_record(directory: Path, splits: dict) -> dict:
    """What prepare records in meta.json to tie a data directory together: the tokenizer's sha256
    (its ids are only meaningful with that tokenizer) and each shard's and train.docs.npy's size
    and sha256."""
    names = [*splits["train"]["shards"], *splits["val"]["shards"], "train.docs.npy"]
    return {"tokenizer_sha256": sha256_file(directory / "tokenizer.json"),
            "files": {name: file_record(directory / name) for name in names}}


def verify_data(path: Path, meta: dict) -> None:
    """Check a data directory against prepare's record, cheaply: the tokenizer's and
    train.docs.npy's sha256 and every shard's size on each open, the shards' sha256 too while they
    total at most VERIFY_SHARD_BYTES (a multi-gigabyte corpus would pay seconds per open).
    A record that is missing fails closed (`missing_records`), except in an older format."""
    again = "re-run superpose prepare"
    if missing_records(path, meta):
        return
    want = meta["tokenizer_sha256"]
    if sha256_file(path / "tokenizer.json") != want:
        raise UserError(f"{path / 'tokenizer.json'} is not the tokenizer this data's tokens were made with (its sha256 "
                        f"differs from meta.json's record); put the original back, or {again}")
    records = meta["files"]
    if not isinstance(records, dict):
        raise UserError(f"{path / 'meta.json'} has files={json.dumps(records)[:30]}, not its record of the data "
                        f"files: corrupt; {again}")
    shard_bytes = sum(r.get("bytes", 0) for n, r in records.items() if n.endswith(".bin") and isinstance(r, dict))
    for name, rec in records.items():
        f = path / name
        if not (isinstance(rec, dict) and f.is_file()):
            raise UserError(f"data file {f} is missing; the data directory is damaged: {again}")
        if f.stat().st_size != rec.get("bytes"):
            raise UserError(f"data file {f} is truncated or corrupt ({f.stat().st_size} bytes, meta.json records "
                            f"{rec.get('bytes')}); {again}")
        if (name.endswith(".npy") or shard_bytes <= VERIFY_SHARD_BYTES) and sha256_file(f) != rec.get("sha256"):
            raise UserError(f"data file {f} is corrupt (sha256 differs from meta.json); {again}")


def missing_records(path: Path, meta: dict) -> bool:
    """Whether meta.json lacks its integrity record, which only a version-1 directory may (it is
    then opened unchecked, said once); in the current format a missing record is a one-line
    UserError, since a check that skips when its record is deleted checks nothing."""
    missing = [k for k in ("tokenizer_sha256", "files") if k not in meta]
    if not missing:
        return False
    # The two came in together: version 1 with one of them is a record cut down by hand.
    if meta["format_version"] != 1 or len(missing) == 1:
        raise UserError(f"{path / META} lacks its {missing[0]} record: it was changed after prepare wrote it, so "
                        "the data cannot be verified; re-run superpose prepare")
    notice(f"{path} was prepared by an older superpose (data format v1, without a record of its tokenizer and "
           "files): it is used unverified; re-run superpose prepare to have it checked on every open")
    return True


def open_dataset(path: Path | str) -> Dataset:
    path = Path(path)
    meta = read_meta(path)
    splits = meta["splits"]
    if not (path / "tokenizer.json").is_file():
        raise UserError(f"{path} has no tokenizer.json; re-run superpose prepare")
    verify_data(path, meta)
    train = TokenStream([path / name for name in splits["train"]["shards"]])
    val = TokenStream([path / name for name in splits["val"]["shards"]])
    docs_path = path / "train.docs.npy"
    try:
        train_docs = np.load(docs_path)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {docs_path} ({e}); re-run superpose prepare") from None
    if train.num_tokens == 0 or val.num_tokens == 0:
        raise UserError(f"{path} has an empty {'train' if train.num_tokens == 0 else 'val'} split; "
                        "prepare it from more text")
    return Dataset(path, meta, train, train_docs, val)
