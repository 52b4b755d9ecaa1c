"""`superpose prepare`: raw text -> held-out split -> tokenizer -> memory-mapped token shards.

The validation split is whole documents held out from every source in proportion to its
size (in-distribution, not the tail of the stream), written in a fixed shuffled order so the
first N validation tokens mix the sources. The tokenizer is a byte-level BPE trained on the
train split only with the `tokenizers` library, unless the user brings a `tokenizer.json`.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import UserError
from ..files import disk_error, fsync_path, lock_dir, write_error
from . import corpus
from . import mutual_info
from .shards import DATA_FORMAT_VERSION, ShardWriter, open_dataset, token_dtype
from .tokenizer import find_eot, load_tokenizer_file, train_tokenizer

ENCODE_BATCH = 2000  # documents per encode_batch call (the Rust side parallelises within it)


def split_documents(sources: list[corpus.Source], val_fraction: float, seed: int):
    """-> (train_docs, val_docs, per-source stats). Each source with >= 2 documents gives whole
    documents to validation until it holds `val_fraction` of that source's characters (at
    least one document, never all of them)."""
    train, val, stats = [], [], []
    for k, src in enumerate(sources):
        docs = src.documents
        chars = sum(len(d) for d in docs)
        order = list(range(len(docs)))
        random.Random(f"{seed}:{k}:{src.name}").shuffle(order)
        held, held_chars = set(), 0
        if len(docs) >= 2 and val_fraction > 0:
            for i in order[:-1]:
                if held and held_chars >= val_fraction * chars:
                    break
                held.add(i)
                held_chars += len(docs[i])
        train += [d for i, d in enumerate(docs) if i not in held]
        val += [docs[i] for i in sorted(held)]
        stats.append({"name": src.name, "license": src.license, "credit": src.credit, "documents": len(docs),
                      "characters": chars, "val_documents": len(held), "val_characters": held_chars})
    if not val:
        raise UserError("cannot hold out a validation split: every source has a single document; split your "
                        "text into documents (one per file, or lines of <|endoftext|>) or add files")
    random.Random(f"{seed}:val").shuffle(val)
    return train, val, stats


def encode_split(tok, docs: list[str], eot_id: int, directory: Path, prefix: str, dtype: np.dtype):
    """Write documents, each followed by end-of-text, to shards.
    -> (shard names, doc starts, tokens, UTF-8 bytes)."""
    writer = ShardWriter(directory, prefix, dtype)
    starts, n_bytes = [], 0
    for i in range(0, len(docs), ENCODE_BATCH):
        batch = docs[i:i + ENCODE_BATCH]
        encs = tok.encode_batch(batch, add_special_tokens=False)
        lengths = np.fromiter((len(e.ids) + 1 for e in encs), dtype=np.int64, count=len(encs))
        starts.append(writer.total + np.concatenate([[0], np.cumsum(lengths)[:-1]]))
        flat = np.fromiter((t for e in encs for t in (*e.ids, eot_id)), dtype=np.int64, count=int(lengths.sum()))
        writer.write(flat)
        n_bytes += sum(len(d.encode("utf-8")) for d in batch)
    paths = writer.close()
    doc_starts = np.concatenate(starts) if starts else np.zeros(0, np.int64)
    return [p.name for p in paths], doc_starts, writer.total, n_bytes


def prepare(out: Path, sources: list[corpus.Source], vocab_size: int = 4096, tokenizer: Path | None = None,
            val_fraction: float = 0.02, seed: int = 0, log: Callable[[str], None] = print, wait: bool = False) -> Path:
    """Build a data directory at `out` atomically: written beside it, then renamed into place.
    wait: when another process is preparing `out`, wait for it instead of refusing."""
    out = Path(out)
    if not 0 < val_fraction < 1:
        raise UserError(f"--val-fraction must be in (0, 1), got {val_fraction}")
    if tokenizer is None and vocab_size < 257:
        raise UserError(f"--vocab-size must be >= 257 (256 bytes + end-of-text), got {vocab_size}")
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file; give --out a directory to create")
    # One prepare per output at a time; with the lock held, any `.NAME.tmp-PID` beside `out` is
    # the leftover of a killed prepare (gigabytes at real sizes), removed here and said so.
    with lock_dir(out, "data directory", blocking=wait, lock_path=_lock_path(out)):
        if (out / "meta.json").exists():
            raise UserError(f"{out} already holds a prepared data set; remove it or choose another --out")
        if out.exists() and any(out.iterdir()):
            raise UserError(f"{out} exists and is not empty; remove it or choose another --out")
        stale = [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.tmp-")]
        if stale:
            size = sum(f.stat().st_size for p in stale for f in p.rglob("*") if f.is_file())
            for p in stale:
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            log(f"prepare: removed {', '.join(p.name for p in stale)} ({size / 1e6:.1f} MB), left by an interrupted "
                f"prepare of {out}")
        t0 = time.time()
        try:
            splits = _build(out, sources, vocab_size, tokenizer, val_fraction, seed, log)
        finally:  # no litter beside the data (a process waiting on the lock re-checks meta.json)
            _lock_path(out).unlink(missing_ok=True)
    dataset = open_dataset(out)  # read back what was written: a broken shard fails here, not mid-training
    # The token-pair mutual information by distance, for tst.weights=mi (seconds; see mutual_info.py).
    try:
        mutual_info.save(out, mutual_info.measure(dataset, log=log), log=log)
    except UserError as e:  # a corpus too small to measure: the data is fine, tst.weights=mi is not
        log(f"mi: not measured ({e})")
    log(f"prepare: {splits['train']['tokens']:,} train and {splits['val']['tokens']:,} validation tokens "
        f"({splits['train']['bytes'] / max(splits['train']['tokens'], 1):.2f} bytes/token) in {out} "
        f"[{time.time() - t0:.0f}s]")
    return out


def _lock_path(out: Path) -> Path:
    return out.parent / f".{out.name}.lock"


def _build(out: Path, sources: list[corpus.Source], vocab_size: int, tokenizer: Path | None, val_fraction: float,
           seed: int, log: Callable[[str], None]) -> dict:
    """Split, tokenize and write everything into `.NAME.tmp-PID/` beside `out`, fsync it, rename
    it into place. A full disk or an I/O error removes the temporary and is one line."""
    train_docs, val_docs, stats = split_documents(sources, val_fraction, seed)
    log(f"prepare: {len(train_docs)} train and {len(val_docs)} validation documents from "
        f"{', '.join(s['name'] for s in stats)}")
    if tokenizer is None:
        log(f"prepare: training a byte-level BPE tokenizer with {vocab_size} tokens on the train split")
        tok = train_tokenizer(train_docs, vocab_size)
    else:
        tok = load_tokenizer_file(tokenizer)
    eot_id = find_eot(tok)
    vocab = tok.get_vocab_size(with_added_tokens=True)
    dtype = token_dtype(vocab)

    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    try:
        tmp.mkdir(parents=True)
        tok.save(str(tmp / "tokenizer.json"))
        splits = {}
        for name, docs in (("train", train_docs), ("val", val_docs)):
            log(f"prepare: tokenizing the {name} split")
            shards, starts, n_tokens, n_bytes = encode_split(tok, docs, eot_id, tmp, name, dtype)
            if name == "train":
                np.save(tmp / "train.docs.npy", starts)
            splits[name] = {"shards": shards, "documents": len(docs), "tokens": n_tokens, "bytes": n_bytes}
        meta = {"format_version": DATA_FORMAT_VERSION, "vocab_size": vocab, "eot_id": eot_id,
                "token_bytes": dtype.itemsize, "tokenizer": "tokenizer.json" if tokenizer is None else str(tokenizer),
                "seed": seed, "val_fraction": val_fraction, "splits": splits, "sources": stats}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        for f in tmp.iterdir():  # on the disk before the rename makes the directory visible
            fsync_path(f)
        fsync_path(tmp)
        if out.exists():
            out.rmdir()  # empty, checked by the caller
        os.replace(tmp, out)
        fsync_path(out.parent)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        os_error = disk_error(e) if isinstance(e, Exception) else None
        if os_error is None:
            raise
        raise write_error(tmp, os_error, intact=f"the partial output was removed, nothing in {out.parent} changed",
                          fix="free some space and run superpose prepare again",
                          label=f"the data directory {out}") from None
    return splits


# ----------------------------------------------------------------------------- the default corpus

def cache_dir() -> Path:
    """$SUPERPOSE_CACHE, else ~/.cache/superpose."""
    return Path(os.environ.get("SUPERPOSE_CACHE") or Path.home() / ".cache" / "superpose")


def default_data_dir(vocab_size: int) -> Path:
    return cache_dir() / "data" / f"default-v{vocab_size}"


def ensure_default_corpus(vocab_size: int, log: Callable[[str], None] = print) -> Path:
    """The default corpus with a `vocab_size` tokenizer, prepared on first use."""
    out = default_data_dir(vocab_size)
    if (out / "meta.json").is_file():
        return out
    # Another process building it at this moment: wait for it, then use what it built.
    with lock_dir(out, "data directory", blocking=True, lock_path=_lock_path(out)):
        if (out / "meta.json").is_file():
            return out
        log(f"prepare: building the default corpus into {out} (once; set SUPERPOSE_CACHE to move it)")
        if out.exists():
            shutil.rmtree(out)  # an interrupted earlier attempt: prepare renames into place atomically
        sources = corpus.default_sources(cache_dir() / "downloads", log=log)
        return prepare(out, sources, vocab_size=vocab_size, log=log)
