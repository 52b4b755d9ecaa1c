"""A superpose data directory as a torchtitan dataloader: the same prepared shards feed both engines.

    --dataloader.path DIR     a `superpose prepare` directory (token shards, meta.json, tokenizer.json);
                              empty: superpose's default corpus at the model's vocabulary, built on
                              first use into $SUPERPOSE_CACHE, as `superpose train` does

The debug configs use it, so `python -m superpose.titan.train --module superpose.titan --config
tst_llama3_debug` runs from a fresh clone. The tokenizer torchtitan builds (`hf_assets_path`) is
the data directory's own `tokenizer.json` (TSTTrainer points `hf_assets_path` there).

Rows: data-parallel rank r of W walks its own contiguous W-th of the train split (and loader
worker w of n its n-th of that), row after row of `seq_len` tokens, labels shifted by one, and
wraps round at the end. Consecutive rows of one walk are consecutive text, so s of them are one
phase-1 row of s*L tokens (trainer.py). Nothing is tokenized while training. The state saved in
a DCP checkpoint is the walk's row counter, so a resume continues from the next row.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch.distributed.checkpoint.stateful import Stateful
from torch.utils.data import IterableDataset, get_worker_info
from torchtitan.components.dataloader import ParallelAwareDataloader

from ..data.default_corpus import ensure_default_corpus
from ..data import open_dataset
from ..errors import UserError


def resolve_data_dir(path: str, vocab_size: int) -> Path:
    """The data directory a run reads: `path`, or the default corpus at `vocab_size` (built if missing)."""
    if path:
        if not (Path(path) / "meta.json").is_file():
            raise UserError(f"--dataloader.path {path} is not a prepared data directory (no meta.json); "
                            f"make one with: superpose prepare --text FILES --out {path}")
        return Path(path)
    return ensure_default_corpus(vocab_size)


class TokenRows(IterableDataset, Stateful):
    """Rows ({"input": (L,)}, labels (L,)) of one rank's contiguous part of a superpose train split."""

    def __init__(self, path: Path, seq_len: int, dp_rank: int, dp_world_size: int):
        self.path, self.seq_len, self.rank, self.world = Path(path), seq_len, dp_rank, dp_world_size
        self.data = open_dataset(self.path)
        self.row = 0  # rows this walk has yielded (the checkpointed state)

    def _part(self) -> tuple[int, int]:
        """[start, end) of this rank's (and worker's) walk, in tokens."""
        info = get_worker_info()
        parts, part = self.world * (info.num_workers if info else 1), self.rank * (info.num_workers if info else 1)
        part += info.id if info else 0
        size = self.data.train.num_tokens // parts
        if size < self.seq_len + 1:
            raise UserError(f"{self.path}'s train split ({self.data.train.num_tokens} tokens) is too small for "
                            f"{parts} walks of rows of {self.seq_len} tokens; prepare more text or lower "
                            "--training.seq_len")
        return part * size, (part + 1) * size

    def __iter__(self):
        start, end = self._part()
        per_pass = (end - start - 1) // self.seq_len  # rows before the walk wraps round
        while True:
            o = start + (self.row % per_pass) * self.seq_len
            x = torch.from_numpy(self.data.train.read(o, self.seq_len + 1))
            self.row += 1
            yield {"input": x[:-1]}, x[1:]

    def state_dict(self) -> dict:
        return {"row": self.row}

    def load_state_dict(self, state: dict) -> None:
        self.row = int(state["row"])


class SuperposeDataLoader(ParallelAwareDataloader):
    """torchtitan's parallel-aware loader over `TokenRows`."""

    @dataclass(kw_only=True, slots=True)
    class Config(ParallelAwareDataloader.Config):
        path: str = ""
        """A superpose data directory (`superpose prepare`); empty: the default corpus, built on first use."""

    def __init__(self, config: Config, *, dp_world_size: int, dp_rank: int, tokenizer, seq_len: int,
                 local_batch_size: int, snapshot_every_n_steps: int | None = 1, **kwargs):
        rows = TokenRows(Path(config.path), seq_len, dp_rank, dp_world_size)
        vocab = getattr(tokenizer, "get_vocab_size", lambda: None)()
        if vocab is not None and vocab < rows.data.vocab_size:
            raise UserError(f"the tokenizer has {vocab} tokens but {config.path} holds ids up to "
                            f"{rows.data.vocab_size}; set hf_assets_path to the data directory")
        super().__init__(rows, dp_rank=dp_rank, dp_world_size=dp_world_size, num_workers=config.num_workers,
                         persistent_workers=config.persistent_workers, pin_memory=config.pin_memory,
                         prefetch_factor=config.prefetch_factor, snapshot_every_n_steps=snapshot_every_n_steps,
                         batch_size=local_batch_size)
