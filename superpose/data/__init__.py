"""Data: raw text -> a prepared data directory -> the rows training and evaluation read.

    corpus.py     raw text sources (the default corpus, or the user's files) as documents
    tokenizer.py  byte-level BPE, end-of-text, bytes per token (for bits per byte)
    prepare.py    `superpose prepare`: held-out split, tokenizer, token shards, atomically
    shards.py     the on-disk format (shards with a header, meta.json) and `open_dataset`
    loader.py     `TrainLoader` (shuffled, resumable rows of s*L + 1 tokens) and `val_windows`
    mixture.py    data.mix: several data directories by weight (`open_mixture`, `MixtureLoader`)
"""

from .loader import TrainLoader, val_windows
from .mixture import Mixture, MixtureLoader, open_mixture
from .shards import Dataset, open_dataset
from .tokenizer import token_byte_lengths

__all__ = ["Dataset", "Mixture", "MixtureLoader", "TrainLoader", "open_dataset", "open_mixture", "token_byte_lengths",
           "val_windows"]
