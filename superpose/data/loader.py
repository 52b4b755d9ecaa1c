"""The loaders: training rows from a shuffled walk over the train split, and the fixed
evaluation windows of the held-out split.

The training loader walks the train split in a deterministic shuffled order of documents
(long documents cut into pieces of at most `MAX_PIECE` tokens), concatenated into one virtual
stream per epoch. Rows are consecutive windows of that stream, so no token is read twice
before the epoch ends whatever mix of row lengths (L in phase 2, s*L in phase 1) is asked for,
and the position carries across the phase switch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..errors import UserError

if TYPE_CHECKING:
    from .shards import TokenStream
    from .source import DataSource

MAX_PIECE = 1 << 16  # longest run of one document kept contiguous by the shuffle


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

    def long_document_share(self, step_tokens: int) -> float:
        """The share of the train split's tokens in documents longer than a step of `step_tokens`
        consecutive tokens. Where it is high, a step's rows are windows of one document and the next
        steps read on in it: the gradient and the loss swing with the document (issue 30's
        non-repeating corpus: 89% at 1,024 tokens, validation loss rising by tenths of a nat)."""
        return float(self.piece_lens[self.piece_lens > step_tokens].sum() / max(int(self.piece_lens.sum()), 1))

    def epoch_record(self) -> dict:
        """What a metrics line and summary.json add about the epochs beside `epoch_progress`: nothing
        for one split (a mixture's loader adds each source's)."""
        return {}

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
        top = int(rows.max()) if rows.size else -1  # a mixture's rank may read none of a source's rows
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


def val_windows(ds: DataSource, seq_len: int, val_tokens: int, vocab_size: int | None = None) -> np.ndarray:
    """The fixed evaluation set of a data source (`DataSource.val_windows`: (N, seq_len + 1)
    windows from the start of the held-out split; a mixture's from every source by weight),
    checked against the model's vocabulary `vocab_size`: a token id outside it is one UserError
    here, as the train split's is in `TrainLoader`, not an IndexError inside the embedding."""
    return _in_vocab(ds.val_windows(seq_len, val_tokens), vocab_size, ds)


def _in_vocab(windows: np.ndarray, vocab_size: int | None, ds) -> np.ndarray:
    if vocab_size is not None and windows.size:
        bad = int(windows.max()) if int(windows.max()) >= vocab_size else int(windows.min())
        if not 0 <= bad < vocab_size:
            raise UserError(f"token id {bad} in the validation split of {ds.spec} is outside the model's vocabulary "
                            f"({vocab_size}); the data and its tokenizer do not match: prepare the data again")
    return windows
