"""Which documents are held out for validation: whole documents, decided deterministically.

An in-memory source (the default corpus) holds out `val_fraction` of its characters, whole
documents in a shuffled order, as it always has. A streamed source holds out each document with
probability `val_fraction`, decided by a hash of (seed, source number, document index), up to
`VAL_MAX_BYTES` per source, never zero documents and never all. An imported token file uses the
same hash (`hash_unit`). Nothing here depends on how prepare batches its work, so a prepare
continued after an interruption decides exactly as an uninterrupted one, given what was held out
before the interruption (`SplitSoFar`).

A source of one document (a single text file, a one-line .jsonl, a one-row parquet: the shape of
nanoGPT's input.txt) has no whole document to hold out, so it holds out the tail of its text, one
contiguous block of `val_fraction` of its characters cut at a line or word boundary, as nanoGPT
holds out the last 10% of its text (`split_source`, `tail_cut`). Documents stay the unit wherever a
source has two or more.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass

from .corpus import Source

VAL_MAX_BYTES = 32 << 20  # held-out text per streamed source, at most (counted in characters)
SPLIT_RULES = 2  # 2: one-document sources hold out a tail (an interrupted prepare of rules 1 starts over)
MIN_TAIL_CHARS = 64  # a held-out tail shorter than this measures nothing; the source is refused instead


@dataclass(frozen=True)
class SplitSoFar:
    """A streamed source's split before the document a resumed prepare continues from: the
    held-out cap and the "never zero, never all" rules count these documents too."""

    held_chars: int = 0
    held_docs: int = 0
    train_docs: int = 0


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


def hash_unit(seed: int, k: int, i: int) -> float:
    """A uniform number in [0, 1) fixed by (seed, source number, document index): the same
    documents get the same split whatever format or file name they come in."""
    h = hashlib.blake2b(f"{seed}:{k}:{i}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") / 2 ** 64


def split_stream(src: Source, k: int, val_fraction: float, seed: int, skip: int = 0,
                 before: SplitSoFar = SplitSoFar()) -> Iterator[tuple[int, str, bool]]:
    """(document index, document, held out?) for every document of source k, from index `skip`;
    `before`: how the documents before `skip` were split (a resumed prepare's journal)."""
    if src.in_memory:
        held = held_out_in_memory(src.documents, val_fraction, seed, k, src.name)
        for i in range(skip, len(src.documents)):
            yield i, src.documents[i], i in held
        return
    # Streamed: each document is held out by its hash, up to VAL_MAX_BYTES. One document of
    # look-ahead lets the last one go to whichever split is still empty.
    docs = itertools.islice(src.iter_documents(), skip, None)
    pending, i = None, skip
    held_chars, n_val, n_train = before.held_chars, before.held_docs, before.train_docs
    for doc in docs:
        if pending is not None:
            j, d = pending
            held = hash_unit(seed, k, j) < val_fraction and held_chars < VAL_MAX_BYTES
            held_chars += len(d) if held else 0
            n_val, n_train = n_val + held, n_train + (not held)
            yield j, d, held
        pending, i = (i, doc), i + 1
    if pending is not None:
        j, d = pending
        held = (hash_unit(seed, k, j) < val_fraction and held_chars < VAL_MAX_BYTES) or (n_val == 0 and n_train > 0)
        held = held and n_train > 0  # a one-document source (or one held out so far) trains on its last
        yield j, d, held


def tail_cut(doc: str, val_fraction: float) -> int | None:
    """Where the held-out tail of a one-document source begins: `val_fraction` of its characters
    (at most VAL_MAX_BYTES) from the end, moved forward to the next line break, else the next space,
    while the tail keeps at least half its size, so no word is cut when it can be helped. None when
    the tail would be shorter than MIN_TAIL_CHARS."""
    want = min(math.ceil(val_fraction * len(doc)), VAL_MAX_BYTES)
    if want < MIN_TAIL_CHARS:
        return None
    start, latest = len(doc) - want, len(doc) - want // 2
    for sep in ("\n", " "):
        cut = doc.find(sep, start, latest)
        if cut != -1:
            return cut
    return start


def split_source(src: Source, k: int, val_fraction: float, seed: int, skip: int = 0,
                 before: SplitSoFar = SplitSoFar()) -> Iterator[tuple[int, str, bool, int | None]]:
    """`split_stream`'s (index, text, held out?) plus where a held-out tail begins: a source of one
    document (long enough for a MIN_TAIL_CHARS tail) yields its tail (held, with the character it
    starts at), then its head (trained), both as document 0; every other piece has None. The tail
    comes first, so the held-out file holds it before the batch holding the head is journaled."""
    pieces = split_stream(src, k, val_fraction, seed, skip, before)
    first = next(pieces, None)
    second = next(pieces, None) if first is not None else None
    if first is not None and second is None and skip == 0 and not first[2]:
        i, doc, _ = first
        cut = tail_cut(doc, val_fraction)
        if cut is not None:
            yield i, doc[cut:].strip(), True, cut
            yield i, doc[:cut].strip(), False, None
            return
    read = [piece for piece in (first, second) if piece is not None]
    for piece in itertools.chain(read, pieces):
        yield (*piece, None)
