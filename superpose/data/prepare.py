"""`superpose prepare`: raw text -> held-out split -> tokenizer -> memory-mapped token shards.

Documents stream through: a source is read one document at a time, each is assigned to the
train or the validation split, train documents are encoded in batches by the tokenizer's own
parallel `encode_batch_fast` (every core) and appended to token shards. Memory holds one batch
and the held-out documents (capped), whatever the corpus size.

The validation split is whole documents (a one-document source: the tail of its text), deterministic
(split.py says which). The held-out documents are written in a fixed shuffled order, so the first N
validation tokens mix the sources.

Interrupted (Ctrl-C, a kill, a full disk), a prepare keeps `.NAME.partial/` beside the output:
its finished shards and a journal of how far each source got (journal.py). The same command
continues from there; another command (other inputs, tokenizer, seed) starts over. The output
directory only appears, by an atomic rename, when everything is written.

Conventions of the tokenizer are kept: each document is encoded with the tokenizer's own special
tokens (a Llama-style BOS template puts BOS before every document, so the model trains with the
convention its exported tokenizer applies at inference) and ends with the end-of-text token.

A prepare is these stages, in order, each a function of one typed state (`Build`) that it
completes with what it makes:

    resume           the journal of an identical interrupted prepare, or a fresh start
    choose_tokenizer the user's tokenizer, the one an interrupted prepare trained, or a new BPE
    stream_train     every document: held out (val.jsonl) or encoded into the train shards
    hold_out         the held-out documents, shuffled, encoded into the val shards
    index_documents  train.docs.npy, every train document's start
    publish          meta.json, fsync, the atomic rename (shards.publish)
"""

from __future__ import annotations

import json
import random
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError
from ..files import disk_error, fsync_path, lock_dir, write_error
from .corpus import Source
from .journal import Journal, Progress, SourceStats, finished, fingerprint, kept, snapshot
from .output import check_args, claim, finish, lock_path, measured, partial_dir
from .shards import DataMeta, ShardWriter, is_prepared, publish as publish_directory, token_dtype
from .split import MIN_TAIL_CHARS, split_source
from .tokenizer import (encode_docs, find_eot, ids_to_tokens, load_tokenizer_file, resolve_tokenizer, template_prefix,
                        train_tokenizer)

ENCODE_BATCH = 2000  # documents per encode_batch call (the Rust side parallelises within it)
ENCODE_BYTES = 8 << 20  # ... or this much text, whichever comes first: bounded memory for long documents
PREPARE_SHARD_TOKENS = 1 << 26  # 128 MiB of uint16 per shard: the granularity an interrupted prepare resumes at
TOKENIZER_TRAIN_BYTES = 1 << 30  # train text a new BPE learns from, at most (the first of the train split)


@dataclass(frozen=True)
class Settings:
    """What the user asked for (with the sources, the journal's fingerprint)."""

    vocab_size: int
    tokenizer: Path | None  # a tokenizer.json; None trains a byte-level BPE of vocab_size
    val_fraction: float
    seed: int
    eot_token: str | None


@dataclass
class Encoding:
    """The tokenizer and what the shards take from it."""

    tok: Any  # a tokenizers.Tokenizer
    eot_id: int
    prefix: list[int]  # the special tokens before each document (a BOS template's)
    vocab: int
    dtype: np.dtype


@dataclass
class Build:
    """The state the stages share: the first fields are given, each later one is set by its stage."""

    out: Path
    partial: Path  # where everything is written until the rename
    sources: list[Source]
    settings: Settings
    log: Callable[[str], None]
    progress: bool  # a progress bar (MB/s, ETA) on stderr
    journal: Journal = field(init=False)  # resume
    done: Progress = field(init=False)  # resume: the journal point; stream_train: the end
    enc: Encoding = field(init=False)  # choose_tokenizer
    val: dict = field(init=False)  # hold_out: meta.json's val split
    train_documents: int = field(init=False)  # index_documents
    splits: dict = field(init=False)  # publish: meta.json's splits


def prepare(out: Path, sources: list[Source], vocab_size: int = 4096, tokenizer: Path | None = None,
            val_fraction: float = 0.02, seed: int = 0, log: Callable[[str], None] = print, wait: bool = False,
            eot_token: str | None = None, progress: bool = False) -> Path:
    """Build a data directory at `out`: streamed into `.NAME.partial/` beside it (resumed from
    there when an earlier identical prepare was interrupted), then renamed into place.
    tokenizer: a tokenizer.json or a folder holding one (None trains a byte-level BPE of
    `vocab_size` on the train split). eot_token: the end-of-document token's name (default: the
    first of tokenizer.EOT_CANDIDATES the tokenizer has). wait: when another process is preparing
    `out`, wait for it instead of refusing. progress: a progress bar (MB/s, ETA) on stderr."""
    out = Path(out)
    check_args(out, vocab_size, tokenizer, val_fraction)
    tokenizer = resolve_tokenizer(tokenizer) if tokenizer is not None else None
    settings = Settings(vocab_size, tokenizer, val_fraction, seed, eot_token)
    with claim(out, log, wait):
        partial = partial_dir(out)
        b = Build(out, partial, sources, settings, log, progress)
        t0 = time.time()
        try:
            for stage in STAGES:
                stage(b)
        except UserError:  # bad input: what was written cannot be continued with other input
            shutil.rmtree(partial, ignore_errors=True)
            raise
        except KeyboardInterrupt:
            raise UserError(f"prepare of {out} interrupted; {_leave(partial)}") from None
        except Exception as e:
            os_error = disk_error(e)
            if os_error is None:
                raise
            resumable = finished(partial)[0] > 0
            raise write_error(partial, os_error, intact=_leave(partial, fix=False),
                              fix="free some space and run the same superpose prepare again"
                              + (" to continue" if resumable else ""),
                              label=f"the data directory {out}") from None
    return finish(out, b.splits, t0, log)


def _leave(partial: Path, fix: bool = True) -> str:
    """What an interrupted prepare leaves (journal.kept), removing the partial directory when no
    finished shard in it can be continued from: what the message says is kept, and nothing else."""
    left = kept(partial, fix)
    if not finished(partial)[0]:
        shutil.rmtree(partial, ignore_errors=True)
    return left


def prepare_once(out: Path, sources: Callable[[], list[Source]], log: Callable[[str], None] = print,
                 **settings) -> Path:
    """`out`, prepared from `sources()` with `settings` unless it already is: a cache entry (the
    default corpus, a text given to train). A process preparing it at this moment is waited for,
    and what it built is used."""
    with lock_dir(out, "data directory", blocking=True, lock_path=lock_path(out)):
        if is_prepared(out):
            return out
        if out.exists():
            shutil.rmtree(out)  # an older superpose's interrupted attempt: prepare renames into place atomically
        return prepare(out, sources(), log=log, **settings)


# ----------------------------------------------------------------------------- the stages

def resume(b: Build) -> None:
    """Continue from the journal of an identical interrupted prepare, dropping whatever was
    written past it; or remove another command's leftovers and start afresh."""
    s = b.settings
    b.journal = Journal(b.partial, fingerprint(b.sources, s.tokenizer, s.vocab_size, s.val_fraction, s.seed,
                                               s.eot_token))
    done = b.journal.load() if b.partial.is_dir() else None
    if b.partial.exists() and done is None:
        shutil.rmtree(b.partial)  # another prepare's leftovers (other inputs, or killed before its first shard)
        b.log(f"prepare: removed {b.partial.name}, left by an interrupted prepare with nothing to continue from "
              "(killed before its first shard, or of other inputs); starting over")
    b.partial.mkdir(parents=True, exist_ok=True)
    b.done = done or Progress.start(b.sources)
    if b.done.started:
        b.log(f"prepare: continuing an interrupted prepare from {b.partial.name}: {len(b.done.shards)} shard(s), "
              f"{b.done.tokens:,} tokens done")
    # Everything past the journal is from after the last finished shard: drop it.
    for f in b.partial.glob("train-*.bin"):
        if f.name not in b.done.shards:
            f.unlink()
    for name, size in (("train.docs.bin", b.done.docs * 8), ("val.jsonl", b.done.val_bytes)):
        with open(b.partial / name, "ab") as h:
            h.truncate(size)


def choose_tokenizer(b: Build) -> None:
    """The user's tokenizer, the one an interrupted prepare trained, or a new BPE trained on (the
    first TOKENIZER_TRAIN_BYTES of) the train split; saved as the data's tokenizer.json."""
    s, path = b.settings, b.partial / "tokenizer.json"
    if s.tokenizer is not None:
        tok = load_tokenizer_file(s.tokenizer)
    elif path.is_file():
        tok = load_tokenizer_file(path)
    else:
        b.log(f"prepare: training a byte-level BPE tokenizer with {s.vocab_size} tokens on the train split")
        tok = train_tokenizer(_tokenizer_text(b.sources, s.val_fraction, s.seed), s.vocab_size)
    vocab = tok.get_vocab_size(with_added_tokens=True)
    b.enc = Encoding(tok, find_eot(tok, s.eot_token), template_prefix(tok), vocab, token_dtype(vocab))
    if not path.is_file():
        tok.save(str(path))


def _tokenizer_text(sources: list[Source], val_fraction: float, seed: int) -> list[str] | Iterator[str]:
    """The text a new BPE learns from: every train document of in-memory sources (the default
    corpus, as always), else the first TOKENIZER_TRAIN_BYTES of the train split, streamed."""
    if all(s.in_memory for s in sources):
        return [d for k, s in enumerate(sources) for _, d, held, _ in split_source(s, k, val_fraction, seed) if not held]

    def train_docs() -> Iterator[str]:
        seen = 0
        for k, s in enumerate(sources):
            for _, d, held, _ in split_source(s, k, val_fraction, seed):
                if not held:
                    yield d
                    seen += len(d)
                    if seen >= TOKENIZER_TRAIN_BYTES:
                        return
    return train_docs()


def stream_train(b: Build) -> None:
    """Every source from the journal point on, one document at a time: held out (appended to
    val.jsonl) or batched into the train shards. Both splits must end up with something."""
    s, stats = b.settings, b.done.stats  # stats: the live counts (the journal holds snapshots)
    w = _TrainWriter(b)
    try:
        with open(b.partial / "val.jsonl", "a", encoding="utf-8") as val_out:
            for k in range(b.done.source, len(b.sources)):
                skip = b.done.doc if k == b.done.source else 0
                for i, doc, held, tail_from in split_source(b.sources[k], k, s.val_fraction, s.seed, skip,
                                                            stats[k].so_far()):
                    st = stats[k]
                    st.documents += tail_from is None  # a held-out tail is the end of document 0, not another
                    st.characters += len(doc)
                    if held:
                        st.val_documents += tail_from is None
                        st.val_characters += len(doc)
                        if tail_from is not None:
                            st.val_tail_from = tail_from
                            _say_tail(b, k, doc)
                        val_out.write(json.dumps(doc) + "\n")
                    elif w.add(doc):
                        w.flush(k, i + 1, val_out, stats)
                if stats[k].documents == 0:
                    raise UserError(f"{b.sources[k].credit} holds no non-empty document; give it some text")
                w.flush(k + 1, 0, val_out, stats)  # the source is done
            w.flush(len(b.sources), -1, val_out, stats)
            w.drain()
    finally:
        w.pool.shutdown(wait=True, cancel_futures=True)
    w.bar.close()
    if not any(st.val_characters for st in stats):
        raise UserError(f"cannot hold out a validation split: every source is a single document too short to hold out "
                        f"its last {100 * s.val_fraction:.3g}% (under {MIN_TAIL_CHARS} characters); add text or raise "
                        "--val-fraction")
    if b.done.tokens == 0:
        raise UserError(f"no training text: the sources ({', '.join(s.name for s in b.sources)}) hold no document "
                        "besides the held-out ones; add text")


def _say_tail(b: Build, k: int, tail: str) -> None:
    """One line on a one-document source's held-out tail (split.split_source), in tokens."""
    tokens = len(b.enc.tok.encode(tail, add_special_tokens=False).ids)
    b.log(f"validation: the last {100 * b.settings.val_fraction:.3g}% of {b.sources[k].credit} ({tokens:,} tokens), "
          "since it is one document")


class _TrainWriter:
    """Train documents -> token shards and train.docs.bin. One batch is encoded on a worker thread
    (the tokenizer's Rust side releases the GIL and uses every core) while this thread reads the
    next documents and turns the previous batch's ids into shards: the Python side hides behind
    the encoding instead of adding to it. After every finished shard, the journal."""

    def __init__(self, b: Build):
        self.b, self.done = b, b.done
        self.writer = ShardWriter(b.partial, "train", b.enc.dtype, PREPARE_SHARD_TOKENS,
                                  first_index=len(b.done.shards), total=b.done.tokens)
        self.docs_file, self.val_file = b.partial / "train.docs.bin", b.partial / "val.jsonl"
        sizes = [s.size_bytes for s in b.sources]
        self.bar = _progress_bar(sum(sizes) if all(sizes) else None, b.progress)
        self.bar.update(b.done.bytes)
        self.pool = ThreadPoolExecutor(max_workers=1)
        self.pending = None  # (future of encodings, batch size, its bytes, the journal point after it)
        self.batch: list[str] = []
        self.batch_bytes = 0

    def add(self, doc: str) -> bool:
        """Queue a train document; True when the batch is full (flush it)."""
        self.batch.append(doc)
        self.batch_bytes += len(doc.encode("utf-8"))
        return len(self.batch) >= ENCODE_BATCH or self.batch_bytes >= ENCODE_BYTES

    def flush(self, k: int, next_doc: int, val_out, stats: list[SourceStats]) -> None:
        """Hand the batch to the encoder, then write the one before it. The journal point after
        this batch is document `next_doc` of source `k` (-1: the end), with the held-out file and
        the statistics as they are now."""
        val_out.flush()
        after = (k, next_doc, self.val_file.stat().st_size, snapshot(stats))
        future = self.pool.submit(self.b.enc.tok.encode_batch_fast, self.batch, add_special_tokens=False)
        self.drain()  # the batch before this one, while the encoder works on this one
        self.pending = (future, len(self.batch), self.batch_bytes, after)
        self.batch, self.batch_bytes = [], 0

    def drain(self) -> None:
        """Write the pending batch; after a shard fills, journal everything up to its end."""
        if self.pending is None:
            return
        (future, n_docs, n_bytes, after), self.pending = self.pending, None
        enc, done, writer = self.b.enc, self.done, self.writer
        flat, lens = ids_to_tokens([e.ids for e in future.result()], enc.eot_id, enc.prefix)
        if n_docs:
            starts = writer.total + np.concatenate([[0], np.cumsum(lens)[:-1]])
            with open(self.docs_file, "ab") as h:
                h.write(starts.astype("<i8").tobytes())
            writer.write(flat, keep_open=True)
        done.docs += n_docs
        done.bytes += n_bytes
        self.bar.update(n_bytes)
        if writer.full() or after[1] < 0:
            writer.end_shard()
            done.source, done.doc, done.val_bytes, done.stats = after
            done.shards, done.tokens = [p.name for p in writer.paths], writer.total
            for f in (self.docs_file, self.val_file, *writer.paths):
                fsync_path(f)
            self.b.journal.save(done)


def _progress_bar(total: int | None, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="prepare", disable=not enabled,
                file=sys.stderr, dynamic_ncols=True, mininterval=1.0)


def hold_out(b: Build) -> None:
    """The held-out documents in a fixed shuffled order, encoded into the val shards."""
    val = [json.loads(line) for line in (b.partial / "val.jsonl").read_text(encoding="utf-8").splitlines()]
    random.Random(f"{b.settings.seed}:val").shuffle(val)
    writer, n_bytes = ShardWriter(b.partial, "val", b.enc.dtype), 0
    for i in range(0, len(val), ENCODE_BATCH):
        flat, _ = encode_docs(b.enc.tok, val[i:i + ENCODE_BATCH], b.enc.eot_id, b.enc.prefix)
        writer.write(flat)
        n_bytes += sum(len(d.encode("utf-8")) for d in val[i:i + ENCODE_BATCH])
    shards = [p.name for p in writer.close()]
    b.val = {"shards": shards, "documents": len(val), "tokens": writer.total, "bytes": n_bytes}


def index_documents(b: Build) -> None:
    """train.docs.npy: the document starts, copied a block at a time (13M documents in a 5 GB corpus)."""
    raw = np.memmap(b.partial / "train.docs.bin", dtype="<i8", mode="r")
    starts = np.lib.format.open_memmap(b.partial / "train.docs.npy", mode="w+", dtype=np.int64, shape=raw.shape)
    for lo in range(0, len(raw), 1 << 22):
        starts[lo:lo + (1 << 22)] = raw[lo:lo + (1 << 22)]
    starts.flush()
    b.train_documents = len(raw)
    del raw, starts


def publish(b: Build) -> None:
    """Remove the working files (the journal last: from here on there is nothing to continue),
    then meta.json, fsync and the rename into place."""
    for name in ("train.docs.bin", "val.jsonl", "journal.json"):
        (b.partial / name).unlink()
    d, e, s = b.done, b.enc, b.settings
    b.splits = {"train": {"shards": d.shards, "documents": b.train_documents, "tokens": d.tokens, "bytes": d.bytes},
                "val": b.val}
    publish_directory(b.partial, b.out, DataMeta(
        e.vocab, e.eot_id, e.tok.id_to_token(e.eot_id), e.prefix, e.dtype.itemsize,
        "tokenizer.json" if s.tokenizer is None else str(s.tokenizer), s.seed, s.val_fraction, b.splits,
        [asdict(st) for st in d.stats]), before_rename=measured(b.log))


STAGES: tuple[Callable[[Build], None], ...] = (resume, choose_tokenizer, stream_train, hold_out, index_documents,
                                               publish)
