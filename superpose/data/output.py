"""Where a prepare writes, whatever its input (text: prepare.py; token ids: token_import.py): the
arguments checked before any work, the output's lock, what a finished or non-empty output
refuses, and the read-back that ends every prepare.

A prepare writes into `.NAME.partial/` beside `out` and renames it into place when everything is
written (`shards.publish`), so `out` is either absent or a finished data directory.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from ..errors import UserError
from ..files import lock_dir
from . import mutual_info
from .shards import is_prepared, open_dataset

# The largest --vocab-size prepare trains. The tokenizers library's BPE trainer reserves about 70
# bytes per requested token up front and aborts the whole process (SIGABRT, no exception) when
# that allocation fails, so an absurd size must be refused before it is called; 2^21 is 8x the
# largest released vocabularies and reserves ~150 MB.
MAX_VOCAB_SIZE = 1 << 21


def check_args(out: Path, vocab_size: int, tokenizer: Path | None, val_fraction: float) -> None:
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


def lock_path(out: Path) -> Path:
    return out.parent / f".{out.name}.lock"


def partial_dir(out: Path) -> Path:
    """Where a prepare of `out` writes until it is finished."""
    return out.parent / f".{out.name}.partial"


@contextlib.contextmanager
def claim(out: Path, log: Callable[[str], None], wait: bool = False) -> Iterator[None]:
    """Hold `out`'s lock (wait=True: wait for another process preparing it, else refuse) and
    refuse a finished or non-empty `out`. The lock file is removed afterwards, so no litter is
    left beside the data (a process waiting on the lock re-checks `is_prepared`)."""
    with lock_dir(out, "data directory", blocking=wait, lock_path=lock_path(out)):
        check_empty(out, log)
        try:
            yield
        finally:
            lock_path(out).unlink(missing_ok=True)


def check_empty(out: Path, log: Callable[[str], None]) -> None:
    """Refuse a finished or non-empty `out`; remove what a killed prepare of an older superpose left."""
    if is_prepared(out):
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


def measured(log: Callable[[str], None]) -> Callable[[Path], None]:
    """What `shards.publish` runs before the rename: read the directory back (a broken shard fails
    here, not mid-training) and measure its token-pair mutual information (tst.weights=mi; seconds,
    see mutual_info.py) into it, so mi.json appears with the data or not at all."""
    def measure(partial: Path) -> None:
        dataset = open_dataset(partial)
        try:
            record = mutual_info.measure(dataset, log=log)
        except UserError as e:  # a corpus too small to measure: the data is fine, tst.weights=mi is not
            log(f"mi: not measured ({e})")
            return
        mutual_info.save(partial, record, log=lambda _: None)
    return measure


def finish(out: Path, splits: dict, t0: float, log: Callable[[str], None]) -> Path:
    """Say what the new directory holds."""
    log(f"prepare: {splits['train']['tokens']:,} train and {splits['val']['tokens']:,} validation tokens "
        f"({splits['train']['bytes'] / max(splits['train']['tokens'], 1):.2f} bytes/token) in {out} "
        f"[{time.time() - t0:.0f}s]")
    return out
