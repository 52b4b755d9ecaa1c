"""Data: raw text -> a prepared data directory -> the rows training and evaluation read.

    corpus.py          `Source`, and the user's text as documents: a reader per file format (`FORMATS`),
                       datasets folders, hub names
    datasets_text.py   what reads through the datasets library: save_to_disk folders, hub names
    default_corpus.py  the default corpus: fetched (pip, apt), cleaned, prepared into the cache on first use
    split.py           which documents are held out for validation (in memory, streamed, resumed)
    tokenizer.py       byte-level BPE, end-of-text, a document's token layout, bytes per token (bits per byte)
    prepare.py         `superpose prepare` of text: named stages over one typed state, atomically
    journal.py         how far an interrupted prepare got (`.NAME.partial/journal.json`)
    token_import.py    `superpose prepare --tokens`: pre-tokenized ids imported without re-tokenizing
    output.py          what both prepares share: argument checks, the output's lock, the read-back
    own_text.py        raw text as --data.path: prepared once into the cache, keyed by its bytes
    shards.py          the on-disk format (shards with a header; meta.json, its only writer and reader)
                       and `open_dataset`
    loader.py          `TrainLoader` (shuffled, resumable rows of s*L + 1 tokens) and `val_windows`
    mixture.py         data.mix: several data directories by weight (`open_mixture`, `MixtureLoader`)
    source.py          `DataSource`: what a run reads, either of the two, never told apart
    mutual_info.py     token-pair mutual information by distance (tst.weights=mi)
"""

from .loader import TrainLoader, val_windows
from .mixture import Mixture, MixtureLoader, open_mixture
from .shards import Dataset, open_dataset
from .source import DataSource, Loader
from .tokenizer import token_byte_lengths

__all__ = ["DataSource", "Dataset", "Loader", "Mixture", "MixtureLoader", "TrainLoader", "open_dataset", "open_mixture", "token_byte_lengths",
           "val_windows"]
