"""`DataSource`: what a run reads its data through, one data directory (`shards.Dataset`) or a
weighted mixture of several (`mixture.Mixture`). Code that takes data takes a DataSource and
never asks which kind it holds: what differs is a method of each.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np


class Loader(Protocol):
    """The training rows of a DataSource (`loader.TrainLoader`, `mixture.MixtureLoader`)."""

    tokens_per_epoch: int
    epoch_progress: float

    def next_rows(self, num_rows: int, row_tokens: int, keep: slice | None = None) -> np.ndarray: ...
    def epoch_record(self) -> dict: ...
    def long_document_share(self, step_tokens: int) -> float: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


class DataSource(Protocol):
    path: Path  # the (first) data directory: where the tokenizer comes from
    vocab_size: int
    eot_id: int
    prefix_ids: list[int]
    tokenizer_path: Path
    spec: str  # how logs, reports and summaries name it
    described: str  # "the data in DIR" / "the mixture SPEC", for messages

    def fingerprint(self) -> dict:
        """What a resumed run checks its data against (a checkpoint's meta.json "data")."""

    def summary(self) -> dict:
        """summary.json's name of the data."""

    def sources_line(self) -> str | None:
        """A start-of-run line about a mixture's sources; None for one directory."""

    def loader(self, seed: int, vocab_size: int) -> Loader:
        """The training rows."""

    def val_windows(self, seq_len: int, val_tokens: int) -> np.ndarray:
        """(N, seq_len + 1) fixed evaluation windows from the held-out split."""
