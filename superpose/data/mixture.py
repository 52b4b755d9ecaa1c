"""Training on a weighted mixture of prepared data directories (data.mix = "DIR_A=0.5,DIR_B=0.5").

    parse_mix(text)         -> [(path, weight), ...]: the syntax, checked (Config.problems uses it)
    open_mixture(text)      -> Mixture: every source opened, one tokenizer among them
    MixtureLoader           the rows of training: each row drawn from one source by weight

What is sampled how: row r of the global batch stream (r counts rows over the whole run) comes
from source i with probability w_i, drawn from a generator seeded by (train.seed, r // BLOCK), so
the choice depends on nothing but the seed and r: not on the batch size per rank, the number of
processes or where a run was resumed. Each source has its own `TrainLoader` (a shuffled walk over
its train split, seeded distinctly) that advances only on the rows drawn from it, so each source
is read without repetition until its own epoch ends.

Validation: `val_windows` takes windows from the start of every source's held-out split, as many
from each as its weight's share of data.val_tokens, so the validation loss is the mixture's
(weighted) loss. The tokenizer is the first source's; all sources must share it.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..files import sha256_file
from .corpus import prepare_command
from .loader import TrainLoader
from .shards import Dataset, open_dataset
from .tokenizer import same_tokenizer

BLOCK = 4096  # rows whose sources one generator call draws
MIX_STREAM = 0x6D6978  # "mix": keeps the row-source generator apart from every other seeded stream


def parse_mix(text: str) -> list[tuple[str, float]]:
    """"DIR_A=0.5,DIR_B=0.5" -> [("DIR_A", 0.5), ("DIR_B", 0.5)], the weights as given (not yet
    normalised). A ValueError says what is wrong. Paths may hold "=" (the last one splits), not ","."""
    items = []
    for item in (part.strip() for part in text.split(",")):
        path, eq, weight = item.rpartition("=")
        if not eq or not path.strip():
            raise ValueError(f"{item!r} is not DIR=WEIGHT")
        try:
            w = float(weight)
        except ValueError:
            raise ValueError(f"the weight of {path.strip()} is not a number: {weight!r}") from None
        if not (math.isfinite(w) and w > 0):
            raise ValueError(f"the weight of {path.strip()} must be a finite number > 0, got {weight.strip()}")
        items.append((path.strip(), w))
    if len(items) < 2:
        raise ValueError(f"a mixture needs at least 2 data directories, got {len(items)} (for one, use data.path)")
    seen = set()
    for path, _ in items:
        key = os.path.abspath(path)  # "data/a" and "./data/a/" are the same directory
        if key in seen:
            raise ValueError(f"{path} appears twice")
        seen.add(key)
    return items


def absolute_mix(text: str) -> str:
    """The same mixture with absolute paths, so a run resumes and evaluates from any working
    directory (as data.path is stored)."""
    return ",".join(f"{os.path.abspath(path)}={w!r}" for path, w in parse_mix(text))


@dataclass
class Mixture:
    """Several opened data directories and their weights, standing in for a `Dataset` where a run
    needs one: `path`, `vocab_size`, `eot_id` and `tokenizer_path` are the first source's (every
    source has the same tokenizer). A mixture has no single train or val stream: rows come from
    `MixtureLoader`, validation windows from `val_windows` (which `loader.val_windows` calls)."""

    sources: list[Dataset]
    weights: np.ndarray  # (S,) float64, normalised to sum 1

    @property
    def path(self) -> Path:
        """The first source's directory: where the tokenizer comes from."""
        return self.sources[0].path

    @property
    def vocab_size(self) -> int:
        return self.sources[0].vocab_size

    @property
    def eot_id(self) -> int:
        return self.sources[0].eot_id

    @property
    def prefix_ids(self) -> list[int]:
        return self.sources[0].prefix_ids

    @property
    def tokenizer_path(self) -> Path:
        return self.sources[0].tokenizer_path

    @property
    def spec(self) -> str:
        """"DIR_A=0.5,DIR_B=0.5" with the normalised weights: how logs and reports name it."""
        return ",".join(f"{s.path}={w:.4g}" for s, w in zip(self.sources, self.weights))

    @property
    def described(self) -> str:
        return f"the mixture {self.spec}"

    def summary(self) -> dict:
        """summary.json's name of the data."""
        return {"data_mix": self.spec}

    def sources_line(self) -> str:
        """The start-of-run line naming each source with its weight and size."""
        return "data: a mixture, each row drawn from one source by weight: " + "; ".join(
            f"{s.path} weight {w:.3g} ({s.train.num_tokens:,} train tokens)" for s, w in zip(self.sources, self.weights))

    def loader(self, seed: int, vocab_size: int) -> MixtureLoader:
        """The training rows: each from one source, drawn by weight (`MixtureLoader`)."""
        return MixtureLoader(self, seed=seed, vocab_size=vocab_size)

    def fingerprint(self) -> dict:
        """What a resumed run checks its data against: the vocabulary, every source's split and
        weight (in "sources"), the token counts summed over them."""
        sources = [{"weight": float(w), "train_tokens": s.train.num_tokens, "val_tokens": s.val.num_tokens}
                   for s, w in zip(self.sources, self.weights)]
        return {"vocab_size": self.vocab_size, "tokenizer_sha256": sha256_file(self.tokenizer_path),
                "train_tokens": sum(s["train_tokens"] for s in sources),
                "val_tokens": sum(s["val_tokens"] for s in sources), "sources": sources}

    def val_windows(self, seq_len: int, val_tokens: int) -> np.ndarray:
        """(N, seq_len + 1) windows from the start of each source's held-out split, source by
        source, N_i of them from source i in proportion to its weight, N = val_tokens // seq_len in
        all (fewer when a source's split is too small for its share: then every share shrinks
        alike, so the proportions hold)."""
        have = np.array([(s.val.num_tokens - 1) // seq_len for s in self.sources])  # windows each split holds
        n = min(val_tokens // seq_len, int(np.min(have / self.weights)))
        if n < 1:
            small = self.sources[int(np.argmin(have / self.weights))]
            raise UserError(f"the validation split of {small.path} has {small.val.num_tokens} tokens, too few for "
                            f"its share of windows of {seq_len + 1}; prepare it with more text or a larger "
                            "--val-fraction")
        # Each source's share rounded so the shares add up to n exactly: cut [0, n] at the rounded
        # cumulative weights.
        cuts = np.round(n * np.concatenate([[0.0], np.cumsum(self.weights)])).astype(np.int64)
        counts = np.minimum(np.diff(cuts), have)
        return np.concatenate([s.val_windows(seq_len, int(k) * seq_len)
                               for s, k in zip(self.sources, counts) if k > 0])


def open_mixture(text: str) -> Mixture:
    """Open every data directory of data.mix; all must share one tokenizer (the model has one
    vocabulary), else one UserError line naming the two directories and the fix."""
    try:
        items = parse_mix(text)
    except ValueError as e:
        raise UserError(f"data.mix: {e}; write it as DIR=WEIGHT,DIR=WEIGHT,...") from None
    sources = [open_dataset(path) for path, _ in items]
    first = sources[0]
    for other in sources[1:]:
        if other.vocab_size != first.vocab_size or not same_tokenizer(first.tokenizer_path, other.tokenizer_path):
            raise UserError(f"{other.path} was tokenized with another tokenizer ({other.vocab_size} tokens) than "
                            f"{first.path} ({first.vocab_size} tokens), and a mixture has one vocabulary; prepare "
                            "its text again with the first one's tokenizer: "
                            + prepare_command("YOUR_TEXT", "NEW_DATA_DIR", "--tokenizer", str(first.tokenizer_path)))
        if (other.eot_id, other.prefix_ids) != (first.eot_id, first.prefix_ids):
            raise UserError(f"{other.path} ends documents with token {other.eot_id} and starts them with "
                            f"{other.prefix_ids}, {first.path} with {first.eot_id} and {first.prefix_ids}; a mixture "
                            "trains one convention: prepare them with the same --eot-token")
    weights = np.array([w for _, w in items], dtype=np.float64)
    return Mixture(sources, weights / weights.sum())


class MixtureLoader:
    """Rows of a weighted mixture, with `TrainLoader`'s interface.

    Global row r (counted over the run) comes from source `choice(r)`: a uniform draw from the
    generator seeded by (seed, MIX_STREAM, r // BLOCK), compared with the cumulative weights. So
    the row-to-source map is fixed by the seed alone, and each source's `TrainLoader` sees the
    same sequence of requests at any world size. The state is the global row count and each
    source loader's (epoch, position): a resume continues bit for bit.
    """

    def __init__(self, mixture: Mixture, seed: int, vocab_size: int):
        self.mixture, self.seed = mixture, seed
        # Distinct, well-separated seeds per source: sources of equal size must not share an order.
        seeds = [int(np.random.SeedSequence([seed, i]).generate_state(1)[0]) for i in range(len(mixture.sources))]
        self.loaders = [TrainLoader(s.train, s.train_docs, seed=k, vocab_size=vocab_size)
                        for s, k in zip(mixture.sources, seeds)]
        self.bounds = np.cumsum(mixture.weights)  # (S,)
        self.bounds[-1] = 1.0  # a draw just below 1 must not fall past the last source by rounding
        self.rows = 0  # global rows handed out so far (every rank's count, not only its own)
        self._block, self._block_index = np.empty(0, dtype=np.int64), -1

    def choices(self, start: int, n: int) -> np.ndarray:
        """(n,) int64: the source of global rows start .. start + n - 1."""
        out = np.empty(n, dtype=np.int64)
        filled = 0
        while filled < n:
            block, offset = divmod(start + filled, BLOCK)
            if block != self._block_index:
                u = np.random.default_rng([self.seed, MIX_STREAM, block]).random(BLOCK)  # (BLOCK,) in [0, 1)
                self._block, self._block_index = np.searchsorted(self.bounds, u, side="right"), block
            take = min(n - filled, BLOCK - offset)
            out[filled:filled + take] = self._block[offset:offset + take]
            filled += take
        return out

    def next_rows(self, num_rows: int, row_tokens: int, keep: slice | None = None) -> np.ndarray:
        """(len(keep's rows), row_tokens + 1) int64, as `TrainLoader.next_rows`.

        Every source loader advances over all of its rows among the num_rows (on every rank) and
        reads only those inside `keep`: the rows of one source inside a contiguous slice of the
        batch are a contiguous slice of that source's rows, which is what `TrainLoader` takes."""
        for s in self.mixture.sources:
            if s.train.num_tokens < row_tokens + 1:
                raise UserError(f"the train split of {s.path} has {s.train.num_tokens} tokens, fewer than one row of "
                                f"{row_tokens + 1}; use more text or a smaller data.seq_len / tst.bag_size")
        picked = range(num_rows)[keep] if keep is not None else range(num_rows)
        choice = self.choices(self.rows, num_rows)  # (num_rows,)
        rows = np.empty((len(picked), row_tokens + 1), dtype=np.int64)
        for i, loader in enumerate(self.loaders):
            mine = np.flatnonzero(choice == i)  # batch rows of source i, ascending
            if len(mine) == 0:
                continue
            lo, hi = np.searchsorted(mine, [picked.start, picked.stop])  # those this rank reads
            rows[mine[lo:hi] - picked.start] = loader.next_rows(len(mine), row_tokens, slice(int(lo), int(hi)))
        self.rows += num_rows
        return rows

    @property
    def tokens_per_epoch(self) -> int:
        """Raw tokens of the mixture, in expectation, until its most-read source (relative to its
        size) has been read once: min over sources of train tokens / weight."""
        return int(min(s.train.num_tokens / w for s, w in zip(self.mixture.sources, self.mixture.weights)))

    def long_document_share(self, step_tokens: int) -> float:
        """TrainLoader.long_document_share over the sources, weighted as the mixture reads them: a
        source's share of a step (its weight of the rows) is consecutive windows of its own stream."""
        return float(sum(w * loader.long_document_share(round(w * step_tokens))
                         for w, loader in zip(self.mixture.weights, self.loaders)))

    @property
    def source_epochs(self) -> list[float]:
        """Epochs each source has been read, in the order of data.mix."""
        return [loader.epoch_progress for loader in self.loaders]

    @property
    def epoch_progress(self) -> float:
        """The epochs of the most-read source: past 1.0, some rows repeat data."""
        return max(self.source_epochs)

    def epoch_record(self) -> dict:
        """What a metrics line and summary.json add beside `epoch_progress`: each source's epochs."""
        return {"source_epochs": self.source_epochs}

    def state_dict(self) -> dict:
        return {"rows": self.rows, "seed": self.seed, "sources": [loader.state_dict() for loader in self.loaders]}

    def load_state_dict(self, state: dict) -> None:
        assert len(state["sources"]) == len(self.loaders), "checked by the data fingerprint before"
        self.rows, self.seed = int(state["rows"]), int(state["seed"])
        self._block_index = -1  # drawn with the seed before
        for loader, st in zip(self.loaders, state["sources"]):
            loader.load_state_dict(st)
