"""`superpose prepare --tokens`: an already tokenized corpus (a nanoGPT .bin, a .npy) imported
with the tokenizer that made it, without re-tokenizing.

Documents are the spans ending at each end-of-text token; whole documents are held out by the
same hash rule as streamed text (`split.hash_unit`, the first document always), and the train
tokens are copied into superpose's shards a chunk at a time, so memory does not grow with the
corpus. The result is the same data directory format as a prepare of text.
"""

from __future__ import annotations

import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..files import disk_error, write_error
from .output import check_args, claim, finish, measured, partial_dir
from .prepare import PREPARE_SHARD_TOKENS
from .shards import DataMeta, ShardWriter, publish, token_dtype
from .split import VAL_MAX_BYTES, hash_unit
from .tokenizer import find_eot, load_tokenizer_file, resolve_tokenizer, token_byte_lengths

IMPORT_CHUNK = 1 << 24  # tokens read at a time from a token file


def open_token_file(path: Path, dtype: str | None) -> np.ndarray:
    """A memory map of a token file: .npy (its own dtype), or raw .bin (nanoGPT: uint16 unless
    `dtype` says uint32)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"token file {path} does not exist; pass a .bin (nanoGPT, raw uint16/uint32) or .npy file")
    try:
        if path.suffix.lower() == ".npy":
            arr = np.load(path, mmap_mode="r")
        else:
            dt = np.dtype(dtype or "uint16")
            if dt not in (np.dtype(np.uint16), np.dtype(np.uint32)):
                raise UserError(f"--token-dtype must be uint16 or uint32, got {dtype}")
            if path.stat().st_size % dt.itemsize:
                raise UserError(f"{path} is {path.stat().st_size} bytes, not a whole number of {dt.name} tokens; "
                                "pass the right --token-dtype")
            arr = np.memmap(path, dtype=dt, mode="r")
    except UserError:  # a ValueError too: already the one line
        raise
    except ValueError as e:
        raise UserError(f"cannot read {path} as tokens ({e}); pass a .npy array or a raw .bin") from None
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        raise UserError(f"{path} holds a {arr.ndim}-D {arr.dtype} array; token files are 1-D integer arrays")
    return arr


@dataclass
class _Imported:
    """What reading the token file gives: the train shards being written, the held-out documents."""

    train: ShardWriter
    starts: list[int] = field(default_factory=list)  # each train document's first token in the train stream
    val: list[np.ndarray] = field(default_factory=list)  # held-out documents, in file order
    documents: int = 0  # documents in the file
    bytes: int = 0  # UTF-8 bytes the train tokens stand for


def prepare_tokens(out: Path, tokens: Path, tokenizer: Path, token_dtype_name: str | None = None,
                   val_fraction: float = 0.02, seed: int = 0, eot_token: str | None = None,
                   log: Callable[[str], None] = print) -> Path:
    """Import an already tokenized corpus (a nanoGPT .bin, a .npy) with the tokenizer that made it,
    without re-tokenizing: documents are the spans ending at each end-of-text token, whole
    documents are held out by the same hash rule as streamed text, and the train tokens are
    copied into superpose's shards a chunk at a time (memory independent of the corpus size)."""
    out = Path(out)
    check_args(out, 4096, tokenizer, val_fraction)
    tok_path = resolve_tokenizer(tokenizer)
    tok = load_tokenizer_file(tok_path)
    eot_id, vocab = find_eot(tok, eot_token), tok.get_vocab_size(with_added_tokens=True)
    arr = open_token_file(tokens, token_dtype_name)
    with claim(out, log):
        partial = partial_dir(out)
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        t0 = time.time()
        try:
            got = _read(arr, partial, tok, tokens, eot_id, vocab, val_fraction, seed)
            tok.save(str(partial / "tokenizer.json"))
            meta = DataMeta(vocab, eot_id, tok.id_to_token(eot_id), [], token_dtype(vocab).itemsize, str(tok_path),
                            seed, val_fraction, _write_splits(partial, got, seed),
                            [{"name": "imported tokens", "license": "user-provided", "credit": "pre-tokenized",
                              "documents": got.documents}])
            publish(partial, out, meta, before_rename=measured(log))
        except BaseException as e:  # nothing is kept: an import is a copy, quick to redo
            shutil.rmtree(partial, ignore_errors=True)
            os_error = disk_error(e) if isinstance(e, Exception) else None
            if os_error is None:
                raise
            raise write_error(partial, os_error, intact=f"the partial output was removed, nothing in {out.parent} "
                              "changed", fix="free some space and run superpose prepare again",
                              label=f"the data directory {out}") from None
    return finish(out, meta.splits, t0, log)


def _read(arr, partial, tok, tokens, eot_id, vocab, val_fraction, seed) -> _Imported:
    """Cut the token ids into documents, hold out whole ones, write the others into train shards."""
    got = _Imported(ShardWriter(partial, "train", token_dtype(vocab), PREPARE_SHARD_TOKENS))
    byte_len = token_byte_lengths(tok, vocab)  # (V,) UTF-8 bytes per id
    held_tokens, n = 0, len(arr)
    carry = np.zeros(0, dtype=np.int64)  # the unfinished document at the end of the last chunk
    for lo in range(0, n, IMPORT_CHUNK):
        chunk = np.concatenate([carry, np.asarray(arr[lo:lo + IMPORT_CHUNK], dtype=np.int64)])
        top, low = (int(chunk.max()), int(chunk.min())) if len(chunk) else (0, 0)
        if top >= vocab or low < 0:
            bad = low if low < 0 else top  # name the id that is wrong, not the largest
            raise UserError(f"{tokens} has token id {bad} outside the tokenizer's {vocab} tokens (0 to {vocab - 1}); "
                            "pass the tokenizer that made it (and --token-dtype if it is uint32)")
        ends = np.flatnonzero(chunk == eot_id) + 1  # each document ends with its end-of-text token
        if lo + IMPORT_CHUNK >= n and (not len(ends) or ends[-1] != len(chunk)):
            ends = np.append(ends, len(chunk))  # the last document may lack its end-of-text
        begin = 0
        for end in ends:
            piece = chunk[begin:end]
            # The first document is always held out, so the split is never empty.
            doc = got.documents
            if doc == 0 or (hash_unit(seed, 0, doc) < val_fraction and held_tokens < VAL_MAX_BYTES // 4):
                got.val.append(piece.copy())
                held_tokens += len(piece)
            else:
                got.starts.append(got.train.total)
                got.train.write(piece)
                got.bytes += int(byte_len[piece].sum())
            begin, got.documents = end, doc + 1
        carry = chunk[begin:]
    if got.documents < 2:
        raise UserError(f"{tokens} holds {got.documents} document(s) when cut after each end-of-text (id {eot_id}); "
                        "pass --eot-token naming the token that separates its documents")
    return got


def _write_splits(partial: Path, got: _Imported, seed: int) -> dict:
    """Close the train shards; the held-out documents, shuffled, into val shards; the document
    index. -> meta.json's splits."""
    shards = [p.name for p in got.train.close()]
    if not got.val or not got.train.total:
        raise UserError("cannot split the token file into train and validation documents; use a larger "
                        "--val-fraction or a longer file")
    random.Random(f"{seed}:val").shuffle(got.val)
    val_writer = ShardWriter(partial, "val", got.train.dtype)
    for piece in got.val:
        val_writer.write(piece)
    val_shards = [p.name for p in val_writer.close()]
    np.save(partial / "train.docs.npy", np.asarray(got.starts, dtype=np.int64))
    return {"train": {"shards": shards, "documents": len(got.starts), "tokens": got.train.total, "bytes": got.bytes},
            "val": {"shards": val_shards, "documents": len(got.val), "tokens": val_writer.total, "bytes": 0}}
