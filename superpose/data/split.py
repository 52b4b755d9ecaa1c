"""Which documents are held out for validation: whole documents, decided deterministically.

An in-memory source (the default corpus) holds out `val_fraction` of its characters, whole
documents in a shuffled order, as it always has. A streamed source holds out each document with
probability `val_fraction`, decided by a hash of (seed, source number, document index), up to
`VAL_MAX_BYTES` per source, never zero documents and never all. An imported token file uses the
same hash (`hash_unit`). Nothing here depends on how prepare batches its work, so a prepare
continued after an interruption decides exactly as an uninterrupted one, given what was held out
before the interruption (`SplitSoFar`).
"""

from __future__ import annotations

import hashlib
import itertools
import random
from collections.abc import Iterator
from dataclasses import dataclass

from .corpus import Source

VAL_MAX_BYTES = 32 << 20  # held-out text per streamed source, at most (counted in characters)


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
