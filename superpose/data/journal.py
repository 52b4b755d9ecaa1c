"""How far an interrupted prepare got: `.NAME.partial/journal.json`.

The journal is written atomically after every finished train shard, so everything it names is
complete on disk; anything in the partial directory past it is dropped when the same command
continues. A journal of another command (other inputs, tokenizer, seed: another `fingerprint`)
is not continued from.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from ..files import sha256_file, write_text
from .corpus import Source
from .shards import DATA_FORMAT_VERSION
from .split import SPLIT_RULES, SplitSoFar


@dataclass
class SourceStats:
    """One source's counts, as meta.json's "sources" records them."""

    name: str
    license: str
    credit: str
    documents: int = 0
    characters: int = 0
    val_documents: int = 0
    val_characters: int = 0
    val_tail_from: int | None = None
    """A one-document source: the character of its document where the held-out tail begins (its
    validation split is that one block, split.tail_cut); None when whole documents are held out."""

    def so_far(self) -> SplitSoFar:
        """How the documents counted so far were split (what a resumed split continues from)."""
        return SplitSoFar(self.val_characters, self.val_documents, self.documents - self.val_documents)


@dataclass
class Progress:
    """A journal point: the stream is complete up to document `doc` of source `source` (doc -1:
    every source is done), with these finished shards and the held-out file at `val_bytes`."""

    source: int = 0
    doc: int = 0
    shards: list[str] = field(default_factory=list)  # finished train shards' file names
    tokens: int = 0  # train tokens in them
    bytes: int = 0  # UTF-8 bytes of train text behind them (counted per drained batch)
    docs: int = 0  # train documents in them (8 bytes each in train.docs.bin; counted per drained batch)
    val_bytes: int = 0
    stats: list[SourceStats] = field(default_factory=list)

    @classmethod
    def start(cls, sources: list[Source]) -> Progress:
        return cls(stats=[SourceStats(s.name, s.license, s.credit) for s in sources])

    @classmethod
    def from_dict(cls, d: dict) -> Progress:
        return cls(**{**d, "stats": [SourceStats(**s) for s in d["stats"]]})

    @property
    def started(self) -> bool:
        return bool(self.shards or self.source or self.doc)


def snapshot(stats: list[SourceStats]) -> list[SourceStats]:
    """A copy of the live counts, to journal once the batches read so far are written."""
    return [replace(s) for s in stats]


def fingerprint(sources: list[Source], tokenizer: Path | None, vocab_size: int, val_fraction: float, seed: int,
                eot_token: str | None) -> dict:
    """What a journal may only be continued with: the same inputs, tokenizer, split and format."""
    return {"sources": [[s.name, s.credit, s.size_bytes] for s in sources], "seed": seed, "val_fraction": val_fraction,
            "tokenizer": sha256_file(tokenizer) if tokenizer else f"bpe-{vocab_size}", "eot": eot_token,
            "format": DATA_FORMAT_VERSION, "split": SPLIT_RULES}


class Journal:
    """journal.json in a partial directory, for one fingerprint."""

    def __init__(self, directory: Path, fingerprint: dict):
        self.path, self.fingerprint = directory / "journal.json", fingerprint

    def load(self) -> Progress | None:
        """The recorded progress, or None: no journal, an unreadable one, or another command's."""
        try:
            state = json.loads(self.path.read_text())
            if state.pop("fingerprint", None) != self.fingerprint:
                return None
            return Progress.from_dict(state)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None

    def save(self, progress: Progress) -> None:
        write_text(self.path, json.dumps({"fingerprint": self.fingerprint, **asdict(progress)}) + "\n")


def finished(partial: Path) -> tuple[int, int]:
    """(shards, tokens) an interrupted prepare can continue from, as its journal records them."""
    try:
        state = json.loads((partial / "journal.json").read_text())
        return len(state["shards"]), int(state["tokens"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0, 0


def kept(partial: Path, fix: bool = True) -> str:
    """What an interrupted prepare leaves to continue from, as its journal records it: the
    finished shards, or nothing (before the first shard the next prepare starts over)."""
    shards, tokens = finished(partial)
    if not shards:
        return "no shard was finished, so nothing is kept" + ("; run the same command again to start over" if fix else "")
    return (f"the finished shards are kept in {partial} ({shards} shard(s), {tokens:,} tokens)"
            + ("; run the same command again to continue from them" if fix else ""))
