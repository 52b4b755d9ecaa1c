"""Tokenized data on disk and the loaders that feed training and evaluation.

On disk, a data directory (made by `superpose prepare`) holds:

    meta.json              format version, vocabulary, end-of-text id, sources, split sizes
    tokenizer.json         a `tokenizers` tokenizer (byte-level BPE unless the user brought one)
    train-00000.bin ...    token shards: a 32-byte header, then the tokens (uint16 or uint32)
    train.docs.npy         int64 start offset of every document in the train stream
    val-00000.bin ...      held-out whole documents, already in a fixed shuffled order

Shard header, little-endian: magic b"SUPERPOS", u32 format version, u32 bytes per token,
u64 token count, 8 reserved bytes. Shards are read with `np.memmap`, so a 10 GB corpus costs
no more memory than 10 MB. Each document ends with the end-of-text token.

The training loader walks the train split in a deterministic shuffled order of documents
(long documents cut into pieces of at most `MAX_PIECE` tokens), concatenated into one virtual
stream per epoch. Rows are consecutive windows of that stream, so no token is read twice
before the epoch ends whatever mix of row lengths (L in phase 2, s*L in phase 1) is asked for,
and the position carries across the phase switch.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import UserError

MAGIC = b"SUPERPOS"
SHARD_VERSION = 1
HEADER = struct.Struct("<8sIIQ8x")  # magic, version, bytes per token, count, reserved
DATA_FORMAT_VERSION = 1
SHARD_TOKENS = 1 << 28  # tokens per shard file (512 MiB of uint16)
MAX_PIECE = 1 << 16  # longest run of one document kept contiguous by the shuffle
EOT_CANDIDATES = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|eot_id|>")


# ----------------------------------------------------------------------------- shards

def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


class ShardWriter:
    """Append tokens to `{prefix}-NNNNN.bin` shards of at most `shard_tokens` tokens each."""

    def __init__(self, directory: Path, prefix: str, dtype: np.dtype, shard_tokens: int = SHARD_TOKENS):
        self.directory, self.prefix, self.dtype, self.shard_tokens = directory, prefix, dtype, shard_tokens
        self.paths: list[Path] = []
        self.total = 0
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

    def write(self, tokens: np.ndarray) -> None:
        tokens = tokens.astype(self.dtype, copy=False)
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
    def tokenizer_path(self) -> Path:
        return self.path / "tokenizer.json"


def open_dataset(path: Path | str) -> Dataset:
    path = Path(path)
    meta_path = path / "meta.json"
    if not path.is_dir():
        raise UserError(f"data directory {path} does not exist; create it with: superpose prepare --out {path}")
    if not meta_path.is_file():
        raise UserError(f"{path} is not a prepared data directory (no meta.json); "
                        f"create it with: superpose prepare --out {path}")
    try:
        meta = json.loads(meta_path.read_text())
        version = meta["format_version"]
        splits = meta["splits"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise UserError(f"{meta_path} is corrupt ({e}); re-run superpose prepare") from None
    if version != DATA_FORMAT_VERSION:
        raise UserError(f"{path} has data format v{version}, this superpose reads v{DATA_FORMAT_VERSION}; "
                        "re-run superpose prepare")
    if not (path / "tokenizer.json").is_file():
        raise UserError(f"{path} has no tokenizer.json; re-run superpose prepare")
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


# ----------------------------------------------------------------------------- loaders

class TrainLoader:
    """Rows of consecutive tokens from a shuffled, epoch-based walk over the train split.

    Each epoch permutes the document pieces with a generator seeded by (seed, epoch) and reads
    them as one virtual stream. A row of `row_tokens` inputs reads row_tokens + 1 tokens (the
    last one is only a label) and advances the position by row_tokens. When fewer than
    row_tokens + 1 tokens are left, the rest of the epoch is dropped and the next one begins.
    The state is just (epoch, position): exact and cheap to save and restore.
    """

    def __init__(self, stream: TokenStream, doc_starts: np.ndarray, seed: int, vocab_size: int):
        self.stream, self.seed, self.vocab_size = stream, seed, vocab_size
        # Pieces: every document, with long ones cut every MAX_PIECE tokens.
        ends = np.append(doc_starts[1:], stream.num_tokens).astype(np.int64)
        starts = doc_starts.astype(np.int64)
        cuts = [starts]
        long_docs = (ends - starts) > MAX_PIECE
        if long_docs.any():
            cuts += [np.arange(s + MAX_PIECE, e, MAX_PIECE) for s, e in zip(starts[long_docs], ends[long_docs])]
        self.piece_starts = np.unique(np.concatenate(cuts))  # (P,)
        self.piece_lens = np.diff(np.append(self.piece_starts, stream.num_tokens))  # (P,)
        self.epoch, self.position = 0, 0
        self._order_epoch = -1

    @property
    def tokens_per_epoch(self) -> int:
        return self.stream.num_tokens

    def _order(self) -> None:
        if self._order_epoch == self.epoch:
            return
        perm = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.piece_starts))
        self._starts = self.piece_starts[perm]
        self._cum = np.concatenate([[0], np.cumsum(self.piece_lens[perm])])  # (P + 1,)
        self._order_epoch = self.epoch

    def _read(self, pos: int, n: int) -> np.ndarray:
        out = np.empty(n, dtype=np.int64)
        i = int(np.searchsorted(self._cum, pos, side="right")) - 1
        filled = 0
        while filled < n:
            lo = pos + filled - int(self._cum[i])
            take = min(n - filled, int(self._cum[i + 1] - self._cum[i]) - lo)
            out[filled:filled + take] = self.stream.read(int(self._starts[i]) + lo, take)
            filled += take
            i += 1
        return out

    def next_rows(self, num_rows: int, row_tokens: int, keep: slice | None = None) -> np.ndarray:
        """(num_rows, row_tokens + 1) int64: inputs are [:, :-1], next-token labels [:, 1:].

        keep: read only these rows of the num_rows (a data-parallel rank's share of the global
        batch). The position advances over all num_rows either way, so every rank's loader
        stays in the same state and the global batch is the same at any number of ranks.
        """
        if row_tokens + 1 > self.stream.num_tokens:
            raise UserError(f"the train split has {self.stream.num_tokens} tokens, fewer than one row of "
                            f"{row_tokens + 1}; use more text or a smaller data.seq_len / tst.bag_size")
        picked = range(num_rows)[keep] if keep is not None else range(num_rows)
        rows = np.empty((len(picked), row_tokens + 1), dtype=np.int64)
        for r in range(num_rows):
            self._order()
            if self.position + row_tokens + 1 > int(self._cum[-1]):
                self.epoch, self.position = self.epoch + 1, 0
                self._order()
            if picked.start <= r < picked.stop:
                rows[r - picked.start] = self._read(self.position, row_tokens + 1)
            self.position += row_tokens
        top = int(rows.max())
        if top >= self.vocab_size:
            raise UserError(f"token id {top} in the train split is outside the model's vocabulary "
                            f"({self.vocab_size}); the data and tokenizer do not match: re-run superpose prepare "
                            "or set --model.vocab_size")
        return rows

    @property
    def epoch_progress(self) -> float:
        """Epochs consumed so far, fractional (1.0 = the whole train split once)."""
        return self.epoch + self.position / max(self.tokens_per_epoch, 1)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position, self.seed = int(state["epoch"]), int(state["position"]), int(state["seed"])
        self._order_epoch = -1


def val_windows(ds: Dataset, seq_len: int, val_tokens: int) -> np.ndarray:
    """The fixed evaluation set: (N, seq_len + 1) consecutive windows from the start of the
    held-out split, stride seq_len, covering min(val_tokens, what the split has) targets."""
    n = min(val_tokens, ds.val.num_tokens - 1) // seq_len
    if n < 1:
        raise UserError(f"the validation split has {ds.val.num_tokens} tokens, fewer than one row of "
                        f"{seq_len + 1}; prepare with more text or a larger --val-fraction")
    flat = ds.val.read(0, n * seq_len + 1)
    idx = np.arange(n)[:, None] * seq_len + np.arange(seq_len + 1)[None, :]
    return flat[idx]


def token_byte_lengths(tokenizer, vocab_size: int) -> np.ndarray:
    """UTF-8 bytes each token id stands for (0 for special tokens), for bits-per-byte.

    Byte-level BPE tokens are strings over a 256-character alphabet, one character per byte, so
    the byte count is the string length. For other tokenizers decode each id.
    """
    from tokenizers import pre_tokenizers

    alphabet = set(pre_tokenizers.ByteLevel.alphabet())
    special = {t.content for t in tokenizer.get_added_tokens_decoder().values() if t.special}
    out = np.zeros(vocab_size, dtype=np.int64)
    for token, idx in tokenizer.get_vocab(with_added_tokens=True).items():
        if idx >= vocab_size or token in special:
            continue
        out[idx] = len(token) if set(token) <= alphabet else len(tokenizer.decode([idx]).encode("utf-8"))
    return out


def bits_per_byte(nll_sum_nats: float, num_bytes: int) -> float:
    return nll_sum_nats / math.log(2) / max(num_bytes, 1)
