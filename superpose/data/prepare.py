"""`superpose prepare`: raw text -> held-out split -> tokenizer -> memory-mapped token shards.

Documents stream through: a source is read one document at a time, each is assigned to the
train or the validation split, train documents are encoded in batches by the tokenizer's own
parallel `encode_batch_fast` (every core) and appended to token shards. Memory holds one batch
and the held-out documents (capped), whatever the corpus size.

The validation split is whole documents, deterministic. For an in-memory source (the default
corpus) it holds `val_fraction` of the source's characters, as it always has; a streamed source
holds out each document with probability `val_fraction`, decided by a hash of (seed, source
number, document index), up to `VAL_MAX_BYTES` per source (never zero documents, never all). The held-out
documents are written in a fixed shuffled order, so the first N validation tokens mix the sources.

Interrupted (Ctrl-C, a kill, a full disk), a prepare keeps `.NAME.partial/` beside the output:
its finished shards and a journal of how far each source got. The same command continues from
there; another command (other inputs, tokenizer, seed) starts over. The output directory only
appears, by an atomic rename, when everything is written.

Conventions of the tokenizer are kept: each document is encoded with the tokenizer's own special
tokens (a Llama-style BOS template puts BOS before every document, so the model trains with the
convention its exported tokenizer applies at inference) and ends with the end-of-text token.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import random
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from collections.abc import Callable, Iterator

import numpy as np

from ..errors import UserError
from ..files import disk_error, fsync_path, lock_dir, write_error, write_text
from . import corpus
from . import mutual_info
from .shards import DATA_FORMAT_VERSION, ShardWriter, integrity_record, open_dataset, token_dtype
from .tokenizer import (find_eot, load_tokenizer_file, resolve_tokenizer, template_prefix, token_byte_lengths,
                        train_tokenizer)

ENCODE_BATCH = 2000  # documents per encode_batch call (the Rust side parallelises within it)
ENCODE_BYTES = 8 << 20  # ... or this much text, whichever comes first: bounded memory for long documents
PREPARE_SHARD_TOKENS = 1 << 26  # 128 MiB of uint16 per shard: the granularity an interrupted prepare resumes at
VAL_MAX_BYTES = 32 << 20  # held-out text per streamed source, at most
TOKENIZER_TRAIN_BYTES = 1 << 30  # train text a new BPE learns from, at most (the first of the train split)


# ----------------------------------------------------------------------------- the split

def held_out_in_memory(docs: list[str], val_fraction: float, seed: int, k: int, name: str) -> set[int]:
    """An in-memory source's held-out documents: whole documents, in a shuffled order, until they
    hold `val_fraction` of the source's characters (at least one document, never all of them)."""
    chars = sum(len(d) for d in docs)
    order = list(range(len(docs)))
    random.Random(f"{seed}:{k}:{name}").shuffle(order)
    held, held_chars = set(), 0
    if len(docs) >= 2 and val_fraction > 0:
        for i in order[:-1]:
            if held and held_chars >= val_fraction * chars:
                break
            held.add(i)
            held_chars += len(docs[i])
    return held


def _hash_unit(seed: int, k: int, i: int) -> float:
    """A uniform number in [0, 1) fixed by (seed, source number, document index): the same
    documents get the same split whatever format or file name they come in."""
    h = hashlib.blake2b(f"{seed}:{k}:{i}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") / 2 ** 64


def split_stream(src: corpus.Source, k: int, val_fraction: float, seed: int,
                 skip: int = 0) -> Iterator[tuple[int, str, bool]]:
    """(document index, document, held out?) for every document of source k, from index `skip`."""
    if src.in_memory:
        held = held_out_in_memory(src.documents, val_fraction, seed, k, src.name)
        for i in range(skip, len(src.documents)):
            yield i, src.documents[i], i in held
        return
    # Streamed: each document is held out by its hash, up to VAL_MAX_BYTES. One document of
    # look-ahead lets the last one go to whichever split is still empty.
    docs = itertools.islice(src.iter_documents(), skip, None)
    pending, i, held_bytes, n_val, n_train = None, skip, 0, 0, 0
    for doc in docs:
        if pending is not None:
            j, d = pending
            held = _hash_unit(seed, k, j) < val_fraction and held_bytes < VAL_MAX_BYTES
            held_bytes += len(d) if held else 0
            n_val, n_train = n_val + held, n_train + (not held)
            yield j, d, held
        pending, i = (i, doc), i + 1
    if pending is not None:
        j, d = pending
        held = (_hash_unit(seed, k, j) < val_fraction and held_bytes < VAL_MAX_BYTES) or (
            n_val == 0 and skip == 0 and n_train > 0)
        held = held and not (n_train == 0 and skip == 0)  # a one-document source trains on it
        yield j, d, held


# ----------------------------------------------------------------------------- encoding

def encode_docs(tok, docs: list[str], eot_id: int, prefix: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """-> (tokens (N,) int64, document lengths (len(docs),)): each document as the tokenizer's
    prefix special tokens (BOS for a Llama-style template; none for ours), its text, end-of-text."""
    return ids_to_tokens([e.ids for e in tok.encode_batch_fast(docs, add_special_tokens=False)], eot_id, prefix)


def ids_to_tokens(ids: list[list[int]], eot_id: int, prefix: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Encoded documents' ids (each `.ids` read once: it builds a list) -> (tokens, lengths) as
    `encode_docs` returns them."""
    lens = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=int(lens.sum()))
    ends = np.cumsum(lens)
    flat = np.insert(flat, ends, eot_id)  # eot after each document
    if prefix:
        starts = np.concatenate([[0], ends[:-1] + np.arange(1, len(ends))])  # each document's start, eot included
        flat = np.insert(flat, np.repeat(starts, len(prefix)), np.tile(prefix, len(starts)))
    return flat, lens + 1 + len(prefix)


class _Journal:
    """How far an interrupted prepare got, in `.NAME.partial/journal.json`: written atomically
    after every finished train shard, so everything it names is complete on disk."""

    def __init__(self, directory: Path, fingerprint: dict):
        self.path, self.fingerprint = directory / "journal.json", fingerprint

    def load(self) -> dict | None:
        try:
            state = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        return state if state.get("fingerprint") == self.fingerprint else None

    def save(self, state: dict) -> None:
        write_text(self.path, json.dumps({"fingerprint": self.fingerprint, **state}) + "\n")


def _fingerprint(sources: list[corpus.Source], tokenizer: Path | None, vocab_size: int, val_fraction: float,
                 seed: int, eot_token: str | None) -> dict:
    from ..files import sha256_file

    return {"sources": [[s.name, s.credit, s.size_bytes] for s in sources], "seed": seed, "val_fraction": val_fraction,
            "tokenizer": sha256_file(tokenizer) if tokenizer else f"bpe-{vocab_size}", "eot": eot_token,
            "format": DATA_FORMAT_VERSION}


def _progress(total: int | None, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="prepare", disable=not enabled,
                file=sys.stderr, dynamic_ncols=True, mininterval=1.0)


def prepare(out: Path, sources: list[corpus.Source], vocab_size: int = 4096, tokenizer: Path | None = None,
            val_fraction: float = 0.02, seed: int = 0, log: Callable[[str], None] = print, wait: bool = False,
            eot_token: str | None = None, progress: bool = False) -> Path:
    """Build a data directory at `out`: streamed into `.NAME.partial/` beside it (resumed from
    there when an earlier identical prepare was interrupted), then renamed into place.
    tokenizer: a tokenizer.json or a folder holding one (None trains a byte-level BPE of
    `vocab_size` on the train split). eot_token: the end-of-document token's name (default: the
    first of tokenizer.EOT_CANDIDATES the tokenizer has). wait: when another process is preparing
    `out`, wait for it instead of refusing. progress: a progress bar (MB/s, ETA) on stderr."""
    out = Path(out)
    _check_args(out, vocab_size, tokenizer, val_fraction)
    tokenizer = resolve_tokenizer(tokenizer) if tokenizer is not None else None
    with lock_dir(out, "data directory", blocking=wait, lock_path=_lock_path(out)):
        _check_empty(out, log)
        partial = out.parent / f".{out.name}.partial"
        t0 = time.time()
        try:
            splits = _build(out, partial, sources, vocab_size, tokenizer, val_fraction, seed, eot_token, log, progress)
        except UserError:  # bad input: what was written cannot be continued with other input
            shutil.rmtree(partial, ignore_errors=True)
            raise
        except KeyboardInterrupt:
            raise UserError(f"prepare of {out} interrupted; {_kept(partial)}") from None
        except Exception as e:
            os_error = disk_error(e)
            if os_error is None:
                raise
            raise write_error(partial, os_error, intact=_kept(partial, fix=False),
                              fix="free some space and run the same superpose prepare again"
                              + (" to continue" if _kept(partial, fix=False).startswith("the") else ""),
                              label=f"the data directory {out}") from None
        finally:  # no litter beside the data (a process waiting on the lock re-checks meta.json)
            _lock_path(out).unlink(missing_ok=True)
    return _finish(out, splits, t0, log)


# The largest --vocab-size prepare trains. The tokenizers library's BPE trainer reserves about 70
# bytes per requested token up front and aborts the whole process (SIGABRT, no exception) when
# that allocation fails, so an absurd size must be refused before it is called; 2^21 is 8x the
# largest released vocabularies and reserves ~150 MB.
MAX_VOCAB_SIZE = 1 << 21


def _check_args(out: Path, vocab_size: int, tokenizer: Path | None, val_fraction: float) -> None:
    if not 0 < val_fraction < 1:
        raise UserError(f"--val-fraction must be in (0, 1), got {val_fraction}")
    if tokenizer is None and vocab_size < 257:
        raise UserError(f"--vocab-size must be >= 257 (256 bytes + end-of-text), got {vocab_size}")
    if tokenizer is None and vocab_size > MAX_VOCAB_SIZE:
        raise UserError(f"--vocab-size {vocab_size:,} is more than superpose trains ({MAX_VOCAB_SIZE:,}; the largest "
                        "released tokenizers have about 256k tokens, and a corpus rarely supplies that many merges); "
                        "use a smaller --vocab-size")
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file; give --out a directory to create")


def _kept(partial: Path, fix: bool = True) -> str:
    """What an interrupted prepare leaves to continue from, as its journal records it: the
    finished shards, or nothing (before the first shard the next prepare starts over)."""
    try:
        state = json.loads((partial / "journal.json").read_text())
        shards, tokens = len(state["shards"]), int(state["tokens"])
    except (OSError, ValueError, KeyError, TypeError):
        shards, tokens = 0, 0
    if not shards:
        return "no shard was finished, so nothing is kept" + ("; run the same command again to start over" if fix else "")
    return (f"the finished shards are kept in {partial} ({shards} shard(s), {tokens:,} tokens)"
            + ("; run the same command again to continue from them" if fix else ""))


def _check_empty(out: Path, log: Callable[[str], None]) -> None:
    """Refuse a finished or non-empty `out`; remove what a killed prepare of an older superpose left."""
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


def _finish(out: Path, splits: dict, t0: float, log: Callable[[str], None]) -> Path:
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


def _tokenizer_for(partial: Path, sources, vocab_size, tokenizer, val_fraction, seed, log):
    """The tokenizer: the user's, the one an interrupted prepare trained, or a new BPE trained on
    (the first TOKENIZER_TRAIN_BYTES of) the train split."""
    if tokenizer is not None:
        return load_tokenizer_file(tokenizer)
    if (partial / "tokenizer.json").is_file():
        return load_tokenizer_file(partial / "tokenizer.json")
    log(f"prepare: training a byte-level BPE tokenizer with {vocab_size} tokens on the train split")
    if all(s.in_memory for s in sources):  # the default corpus: every train document, as always
        docs = [d for k, s in enumerate(sources) for _, d, held in split_stream(s, k, val_fraction, seed) if not held]
        return train_tokenizer(docs, vocab_size)

    def train_docs() -> Iterator[str]:
        seen = 0
        for k, s in enumerate(sources):
            for _, d, held in split_stream(s, k, val_fraction, seed):
                if not held:
                    yield d
                    seen += len(d)
                    if seen >= TOKENIZER_TRAIN_BYTES:
                        return
    return train_tokenizer(train_docs(), vocab_size)


def _build(out: Path, partial: Path, sources: list[corpus.Source], vocab_size: int, tokenizer: Path | None,
           val_fraction: float, seed: int, eot_token: str | None, log: Callable[[str], None], progress: bool) -> dict:
    """Stream every source into `partial`, resuming from its journal; then the validation split,
    meta.json, fsync, and the rename to `out`."""
    journal = _Journal(partial, _fingerprint(sources, tokenizer, vocab_size, val_fraction, seed, eot_token))
    state = journal.load() if partial.is_dir() else None
    if partial.exists() and state is None:
        shutil.rmtree(partial)  # another prepare's leftovers (other inputs, or killed before its first shard)
        log(f"prepare: removed {partial.name}, left by an interrupted prepare with nothing to continue from "
            "(killed before its first shard, or of other inputs); starting over")
    partial.mkdir(parents=True, exist_ok=True)
    tok = _tokenizer_for(partial, sources, vocab_size, tokenizer, val_fraction, seed, log)
    eot_id = find_eot(tok, eot_token)
    prefix = template_prefix(tok)
    vocab = tok.get_vocab_size(with_added_tokens=True)
    dtype = token_dtype(vocab)
    if not (partial / "tokenizer.json").is_file():
        tok.save(str(partial / "tokenizer.json"))
    state = state or {"source": 0, "doc": 0, "shards": [], "tokens": 0, "bytes": 0, "docs": 0, "val_bytes": 0,
                      "stats": [{"name": s.name, "license": s.license, "credit": s.credit, "documents": 0,
                                 "characters": 0, "val_documents": 0, "val_characters": 0} for s in sources]}
    if state["shards"] or state["source"] or state["doc"]:
        log(f"prepare: continuing an interrupted prepare from {partial.name}: {len(state['shards'])} shard(s), "
            f"{state['tokens']:,} tokens done")
    # Everything past the journal is from after the last finished shard: drop it.
    for f in partial.glob("train-*.bin"):
        if f.name not in state["shards"]:
            f.unlink()
    docs_file, val_file = partial / "train.docs.bin", partial / "val.jsonl"
    for f, size in ((docs_file, state["docs"] * 8), (val_file, state["val_bytes"])):
        with open(f, "ab") as h:
            h.truncate(size)
    writer = ShardWriter(partial, "train", dtype, PREPARE_SHARD_TOKENS, first_index=len(state["shards"]),
                         total=state["tokens"])
    total = sum(s.size_bytes or 0 for s in sources) if all(s.size_bytes for s in sources) else None
    bar = _progress(total, progress)
    bar.update(state["bytes"])
    batch: list[str] = []
    batch_bytes = 0
    stats = state["stats"]
    # One batch is encoded on a worker thread (the tokenizer's Rust side releases the GIL and uses
    # every core) while this thread reads the next documents and turns the previous batch's ids
    # into shards: the Python side hides behind the encoding instead of adding to it.
    pool = ThreadPoolExecutor(max_workers=1)
    pending = None  # (future of encodings, batch size, its bytes, the state to journal after it)

    def drain() -> None:
        """Write the pending batch; after a shard fills, journal everything up to its end."""
        nonlocal pending
        if pending is None:
            return
        future, n_docs, n_bytes, after = pending
        pending = None
        flat, lens = ids_to_tokens([e.ids for e in future.result()], eot_id, prefix)
        if n_docs:
            starts = writer.total + np.concatenate([[0], np.cumsum(lens)[:-1]])
            with open(docs_file, "ab") as h:
                h.write(starts.astype("<i8").tobytes())
            writer.write(flat, keep_open=True)
        state["docs"] += n_docs
        state["bytes"] += n_bytes
        bar.update(n_bytes)
        if writer.full() or after["doc"] < 0:
            writer.end_shard()
            state.update(after, shards=[p.name for p in writer.paths], tokens=writer.total)
            for f in (docs_file, val_file, *writer.paths):
                fsync_path(f)
            journal.save(state)

    def flush(k: int, next_doc: int, val_out) -> None:
        """Hand the batch to the encoder, then write the one before it. The journal point after
        this batch is document `next_doc` of source `k` (-1: the end), with the held-out file and
        the statistics as they are now."""
        nonlocal batch, batch_bytes, pending
        val_out.flush()
        after = {"source": k, "doc": next_doc, "val_bytes": val_file.stat().st_size,
                 "stats": json.loads(json.dumps(stats))}
        future = pool.submit(tok.encode_batch_fast, batch, add_special_tokens=False)
        drain()  # the batch before this one, while the encoder works on this one
        pending = (future, len(batch), batch_bytes, after)
        batch, batch_bytes = [], 0

    try:
        with open(val_file, "a", encoding="utf-8") as val_out:
            for k in range(state["source"], len(sources)):
                skip = state["doc"] if k == state["source"] else 0
                for i, doc, held in split_stream(sources[k], k, val_fraction, seed, skip):
                    st = stats[k]
                    st["documents"] += 1
                    st["characters"] += len(doc)
                    if held:
                        st["val_documents"] += 1
                        st["val_characters"] += len(doc)
                        val_out.write(json.dumps(doc) + "\n")
                        continue
                    batch.append(doc)
                    batch_bytes += len(doc.encode("utf-8"))
                    if len(batch) >= ENCODE_BATCH or batch_bytes >= ENCODE_BYTES:
                        flush(k, i + 1, val_out)
                if stats[k]["documents"] == 0:
                    raise UserError(f"{sources[k].credit} holds no non-empty document; give it some text")
                flush(k + 1, 0, val_out)  # the source is done
            flush(len(sources), -1, val_out)
            drain()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    bar.close()
    if not any(st["val_documents"] for st in stats):
        raise UserError("cannot hold out a validation split: every source has a single document; split your "
                        "text into documents (one per file, or lines of <|endoftext|>) or add files")
    if state["tokens"] == 0:
        raise UserError(f"no training text: the sources ({', '.join(s.name for s in sources)}) hold no document "
                        "besides the held-out ones; add text")
    return _write_out(out, partial, tok, eot_id, prefix, vocab, dtype, state, tokenizer, seed, val_fraction,
                      eot_token)


def _write_out(out, partial, tok, eot_id, prefix, vocab, dtype, state, tokenizer, seed, val_fraction, eot_token):
    """The held-out split (shuffled, encoded), train.docs.npy, meta.json; fsync; rename into place."""
    val = [json.loads(line) for line in (partial / "val.jsonl").read_text(encoding="utf-8").splitlines()]
    random.Random(f"{seed}:val").shuffle(val)
    val_writer = ShardWriter(partial, "val", dtype)
    val_tokens, val_bytes = 0, 0
    for i in range(0, len(val), ENCODE_BATCH):
        flat, _ = encode_docs(tok, val[i:i + ENCODE_BATCH], eot_id, prefix)
        val_writer.write(flat)
        val_bytes += sum(len(d.encode("utf-8")) for d in val[i:i + ENCODE_BATCH])
    val_shards = [p.name for p in val_writer.close()]
    val_tokens = val_writer.total
    # The document starts, copied into a .npy a block at a time (13M documents in a 5 GB corpus).
    raw = np.memmap(partial / "train.docs.bin", dtype="<i8", mode="r")
    starts = np.lib.format.open_memmap(partial / "train.docs.npy", mode="w+", dtype=np.int64, shape=raw.shape)
    for lo in range(0, len(raw), 1 << 22):
        starts[lo:lo + (1 << 22)] = raw[lo:lo + (1 << 22)]
    starts.flush()
    n_docs = len(raw)
    del raw, starts
    (partial / "train.docs.bin").unlink()
    (partial / "val.jsonl").unlink()
    (partial / "journal.json").unlink()
    splits = {"train": {"shards": state["shards"], "documents": n_docs, "tokens": state["tokens"],
                        "bytes": state["bytes"]},
              "val": {"shards": val_shards, "documents": len(val), "tokens": val_tokens, "bytes": val_bytes}}
    meta = {"format_version": DATA_FORMAT_VERSION, "vocab_size": vocab, "eot_id": eot_id,
            "eot_token": tok.id_to_token(eot_id), "prefix_ids": prefix,
            "token_bytes": dtype.itemsize, "tokenizer": "tokenizer.json" if tokenizer is None else str(tokenizer),
            "seed": seed, "val_fraction": val_fraction, "splits": splits, "sources": state["stats"],
            **integrity_record(partial, splits)}  # checked on every open: tokenizer, shards, docs tied together
    (partial / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    for f in partial.iterdir():  # on the disk before the rename makes the directory visible
        fsync_path(f)
    fsync_path(partial)
    if out.exists():
        out.rmdir()  # empty, checked by the caller
    os.replace(partial, out)
    fsync_path(out.parent)
    return splits


# ----------------------------------------------------------------------------- pre-tokenized corpora

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


def prepare_tokens(out: Path, tokens: Path, tokenizer: Path, token_dtype_name: str | None = None,
                   val_fraction: float = 0.02, seed: int = 0, eot_token: str | None = None,
                   log: Callable[[str], None] = print) -> Path:
    """Import an already tokenized corpus (a nanoGPT .bin, a .npy) with the tokenizer that made it,
    without re-tokenizing: documents are the spans ending at each end-of-text token, whole
    documents are held out by the same hash rule as streamed text, and the train tokens are
    copied into superpose's shards a chunk at a time (memory independent of the corpus size)."""
    out = Path(out)
    _check_args(out, 4096, tokenizer, val_fraction)
    tok_path = resolve_tokenizer(tokenizer)
    tok = load_tokenizer_file(tok_path)
    eot_id, vocab = find_eot(tok, eot_token), tok.get_vocab_size(with_added_tokens=True)
    arr = open_token_file(tokens, token_dtype_name)
    dtype = token_dtype(vocab)
    with lock_dir(out, "data directory", lock_path=_lock_path(out)):
        _check_empty(out, log)
        partial = out.parent / f".{out.name}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        t0 = time.time()
        try:
            state = _import(arr, partial, tok_path, tokens, eot_id, vocab, dtype, val_fraction, seed)
            tok.save(str(partial / "tokenizer.json"))
            splits = _write_tokens_out(out, partial, tok, eot_id, vocab, dtype, state, tok_path, seed, val_fraction)
        except BaseException as e:
            shutil.rmtree(partial, ignore_errors=True)
            os_error = disk_error(e) if isinstance(e, Exception) else None
            if os_error is None:
                raise
            raise write_error(partial, os_error, intact=f"the partial output was removed, nothing in {out.parent} "
                              "changed", fix="free some space and run superpose prepare again",
                              label=f"the data directory {out}") from None
        finally:
            _lock_path(out).unlink(missing_ok=True)
    return _finish(out, splits, t0, log)


def _import(arr, partial, tok_path, tokens, eot_id, vocab, dtype, val_fraction, seed) -> dict:
    train = ShardWriter(partial, "train", dtype, PREPARE_SHARD_TOKENS)
    byte_len = token_byte_lengths(load_tokenizer_file(tok_path), vocab)  # (V,) UTF-8 bytes per id
    starts, val_docs, held_tokens, doc, n, n_bytes = [], [], 0, 0, len(arr), 0
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
            if doc == 0 or (_hash_unit(seed, 0, doc) < val_fraction and held_tokens < VAL_MAX_BYTES // 4):
                val_docs.append(piece.copy())
                held_tokens += len(piece)
            else:
                starts.append(train.total)
                train.write(piece)
                n_bytes += int(byte_len[piece].sum())
            begin, doc = end, doc + 1
        carry = chunk[begin:]
    if doc < 2:
        raise UserError(f"{tokens} holds {doc} document(s) when cut after each end-of-text (id {eot_id}); pass "
                        "--eot-token naming the token that separates its documents")
    return {"train": train, "starts": starts, "val": val_docs, "documents": doc, "bytes": n_bytes}


def _write_tokens_out(out, partial, tok, eot_id, vocab, dtype, state, tok_path, seed, val_fraction) -> dict:
    train: ShardWriter = state["train"]
    shards = [p.name for p in train.close()]
    val = state["val"]
    if not val or not train.total:
        raise UserError("cannot split the token file into train and validation documents; use a larger "
                        "--val-fraction or a longer file")
    random.Random(f"{seed}:val").shuffle(val)
    val_writer = ShardWriter(partial, "val", dtype)
    for piece in val:
        val_writer.write(piece)
    val_shards = [p.name for p in val_writer.close()]
    np.save(partial / "train.docs.npy", np.asarray(state["starts"], dtype=np.int64))
    splits = {"train": {"shards": shards, "documents": len(state["starts"]), "tokens": train.total,
                        "bytes": state["bytes"]},
              "val": {"shards": val_shards, "documents": len(val), "tokens": val_writer.total, "bytes": 0}}
    meta = {"format_version": DATA_FORMAT_VERSION, "vocab_size": vocab, "eot_id": eot_id,
            "eot_token": tok.id_to_token(eot_id), "prefix_ids": [], "token_bytes": dtype.itemsize,
            "tokenizer": str(tok_path), "seed": seed, "val_fraction": val_fraction, "splits": splits,
            "sources": [{"name": "imported tokens", "license": "user-provided", "credit": "pre-tokenized",
                         "documents": state["documents"]}], **integrity_record(partial, splits)}
    (partial / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    for f in partial.iterdir():
        fsync_path(f)
    fsync_path(partial)
    if out.exists():
        out.rmdir()
    os.replace(partial, out)
    fsync_path(out.parent)
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
