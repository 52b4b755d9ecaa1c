"""The training data of `TSTTrainer`: what a Hugging Face user hands a Trainer, turned into superpose's rows.

    token_source(data, ...)   -> (stream, doc_starts) from a `datasets.Dataset` (a token-id column,
                                 or text and a tokenizer), a list of documents (id lists or texts),
                                 a 1-D array or tensor, or superpose's `open_dataset(...)` / `.train`
    TokenRows                 rows in the stream's own order (train_tokens=, and evaluation)
    ShuffledRows              rows in the native loader's order: documents shuffled per epoch by a
                              seed (train_dataset=)
    DataError                 the one-line error for a wrong input

Documents are joined into one stream with the end-of-text (eos) token after each, as `superpose
prepare` writes them, so a row of `n + 1` tokens can cross a document boundary (pretraining
packing, no padding). A row advances the position by n, whatever n is: the superposition phase's
rows of s*L + 1 and the next-token rows of L + 1 walk the same stream, so the switch carries on
where phase 1 stopped. Which rows come out depends only on (seed, row index), never on timing,
so a Trainer resumed from a checkpoint skips to exactly the rows it has not seen.

`datasets` is optional (`superpose[data]`): it is never imported here; a Dataset is recognised
only if the caller's `datasets` module is already loaded.
"""

from __future__ import annotations

import itertools
import sys

import numpy as np
import torch
from torch import Tensor

from ..data import Dataset as DataDirectory
from ..data import TrainLoader
from ..data.shards import token_dtype
from ..errors import UserError

SCAN_BLOCK = 1 << 24  # tokens read at a time when looking for end-of-text in a memory-mapped stream
TOKENIZE_BATCH = 1000  # documents per tokenizer call


class DataError(UserError, ValueError, TypeError):
    """A train_dataset / eval_dataset / train_tokens that TSTTrainer cannot use. One line: the
    problem and the fix. It is a ValueError and a TypeError (what a Trainer user catches) and a
    UserError (what superpose's CLI prints without a traceback)."""


class ArrayStream:
    """A 1-D in-memory token array read like `shards.TokenStream` (`read(start, n)`, `num_tokens`),
    so the native `TrainLoader` walks it unchanged."""

    def __init__(self, tokens: np.ndarray):
        self.tokens, self.num_tokens = tokens, len(tokens)

    def read(self, start: int, n: int) -> np.ndarray:
        return self.tokens[start:start + n].astype(np.int64)


def is_stream(data) -> bool:
    return hasattr(data, "read") and hasattr(data, "num_tokens")


# ----------------------------------------------------------------------------- rows


class TokenRows(torch.utils.data.IterableDataset):
    """Consecutive rows of one token stream: the first `phase1_rows` rows hold bag_size*seq_len + 1
    tokens, the rest seq_len + 1. `stages` [(rows, s), ...] gives several row lengths in turn
    instead (a bag-size curriculum: stage k's rows hold s_k*seq_len + 1 tokens), then seq_len + 1.

    `tokens`: a 1-D array, tensor or list of ids, or a stream with `read(start, n)` and
    `num_tokens` (`superpose.data.open_dataset(...).train`). A row of n + 1 tokens advances the
    position by n (its last token is only a label), so no token is read as an input twice before
    the stream ends; then it starts over (another epoch), unless `repeat=False`. The row lengths
    depend only on how many rows came before, never on timing, so a data loader that fetches
    ahead gets the right rows, and every iteration yields the same rows from the start (a resumed
    Trainer skips the ones it has seen).
    """

    def __init__(self, tokens, seq_len: int, bag_size: int = 1, phase1_rows: int = 0, repeat: bool = True,
                 stages: list[tuple[int, int]] | None = None, vocab_size: int | None = None,
                 what: str = "the token stream"):
        super().__init__()
        self.stages = stages if stages is not None else ([(phase1_rows, bag_size)] if phase1_rows else [])
        self.stream = tokens if is_stream(tokens) else ArrayStream(flat_ids(tokens, what, vocab_size))
        longest = max([s for _, s in self.stages] + [1]) * seq_len + 1
        if self.num_tokens < longest:
            raise DataError(f"{what} has {self.num_tokens} tokens, fewer than one row of {longest}; "
                            "give more tokens or a smaller seq_len / bag_size")
        self.seq_len, self.bag_size, self.phase1_rows, self.repeat = seq_len, bag_size, phase1_rows, repeat

    @property
    def num_tokens(self) -> int:
        return self.stream.num_tokens

    def row_tokens(self, row: int) -> int:
        """Input tokens of row `row` (0-based): s*L in a stage that bags its input, L after."""
        end = 0
        for rows, s in self.stages:
            end += rows
            if row < end:
                return s * self.seq_len
        return self.seq_len

    def epoch_at(self, num_rows: int) -> float:
        """Epochs of text the first `num_rows` rows consumed: whole epochs, plus the position in
        the current one over the stream's tokens (1.0 = every token read once as an input).

        The walk of `__iter__` in closed form, stage by stage (a loop over rows would cost
        O(steps) at every log): a row of n inputs fits while position + n + 1 <= T; the first
        row that does not starts the next epoch at position 0, leaving the tail unread.
        """
        T = self.num_tokens
        epoch, pos, done = 0, 0, 0
        for rows, n in [(r, s * self.seq_len) for r, s in self.stages] + [(num_rows, self.seq_len)]:
            k = min(rows, num_rows - done)  # rows of n inputs among the first num_rows
            done += k
            fit = (T - 1 - pos) // n  # rows that still fit in this epoch (pos <= T - 1 always)
            if k <= fit:
                pos += k * n
            else:
                k -= fit
                per_epoch = (T - 1) // n
                epoch += 1 + (k - 1) // per_epoch
                pos = ((k - 1) % per_epoch + 1) * n
        return epoch + pos / T

    def __iter__(self):
        pos, row = 0, 0
        while True:
            n = self.row_tokens(row)
            if pos + n + 1 > self.num_tokens:
                if not self.repeat:
                    return
                pos = 0
            yield {"input_ids": torch.from_numpy(self.stream.read(pos, n + 1))}
            pos += n
            row += 1


class ShuffledRows(TokenRows):
    """TokenRows in the order of superpose's own loader (`data.loader.TrainLoader`, used here as
    is): each epoch reads the documents (those longer than 65,536 tokens in pieces) in a
    permutation seeded by (seed, epoch), as one stream. The row lengths, the position's advance
    and the epochs are TokenRows'; only the order of the documents differs.

    doc_starts: int64 offset of every document in the stream ([0]: one document, shuffled in
    pieces).
    """

    def __init__(self, tokens, seq_len: int, *, seed: int, doc_starts: np.ndarray,
                 stages: list[tuple[int, int]] | None = None, vocab_size: int | None = None,
                 what: str = "train_dataset"):
        super().__init__(tokens, seq_len, stages=stages, vocab_size=vocab_size, what=what)
        self.seed, self.doc_starts = seed, doc_starts
        # TrainLoader refuses an id >= vocab_size row by row: an in-memory array was checked whole
        # already, a memory-mapped stream is checked as it is read.
        self.vocab_size = vocab_size if vocab_size is not None else np.iinfo(np.int64).max

    def __iter__(self):
        loader = TrainLoader(self.stream, self.doc_starts, self.seed, self.vocab_size)
        for row in itertools.count():
            yield {"input_ids": torch.from_numpy(loader.next_rows(1, self.row_tokens(row))[0])}


# ----------------------------------------------------------------------------- inputs -> one stream


def check_ids(ids: np.ndarray, what: str, vocab_size: int | None) -> None:
    """Integer ids in [0, vocab_size), or a DataError."""
    if ids.dtype.kind not in "iu":
        raise DataError(f"{what} holds {ids.dtype} values, not integer token ids; give token ids as integers, "
                        "or text with processing_class=<tokenizer>")
    if not ids.size:
        return
    low, top = int(ids.min()), int(ids.max())
    if low < 0:
        raise DataError(f"{what} holds token id {low}; token ids are >= 0: tokenize with the model's tokenizer")
    if vocab_size is not None and top >= vocab_size:
        raise DataError(f"{what} holds token id {top}, outside the model's vocabulary of {vocab_size}; tokenize "
                        "with the model's tokenizer, or grow the model (model.resize_token_embeddings)")


def flat_ids(tokens, what: str, vocab_size: int | None) -> np.ndarray:
    """A 1-D array, tensor or list of ids as a checked numpy array (a tensor's dtype kept)."""
    if isinstance(tokens, Tensor):
        tokens = tokens.detach().cpu().numpy()
    elif not isinstance(tokens, np.ndarray):
        try:
            tokens = np.asarray(tokens)
        except ValueError:  # ragged lists
            raise DataError(f"{what} is not one flat sequence of token ids; pass documents (a list of id lists) "
                            "as train_dataset=") from None
    if tokens.ndim != 1:
        raise DataError(f"{what} must be one 1-D stream of token ids, got shape {tuple(tokens.shape)}")
    check_ids(tokens, what, vocab_size)
    return tokens


def doc_starts_at_eos(stream, eos: int | None) -> np.ndarray:
    """Offsets of the documents in a flat stream: 0, and after each end-of-text token (as `superpose
    prepare --tokens` cuts one); just [0] when the eos token is not known."""
    starts = [np.zeros(1, dtype=np.int64)]
    if eos is not None:
        for lo in range(0, stream.num_tokens, SCAN_BLOCK):
            block = stream.read(lo, min(SCAN_BLOCK, stream.num_tokens - lo))
            starts.append(np.flatnonzero(block == eos) + lo + 1)
    starts = np.concatenate(starts)
    return starts[starts < stream.num_tokens]


def pack(batches, eos: int | None, what: str, vocab_size: int) -> tuple[ArrayStream, np.ndarray]:
    """Documents, given as batches of (ids (N,), lengths (D,)), joined into one stream with eos
    after each that does not already end with it (a tokenizer that appends eos itself); empty
    documents are dropped. -> (stream, doc_starts (D',))."""
    if eos is None:
        raise DataError(f"{what} gives documents, which are joined with an end-of-text token, and none is known; "
                        "pass processing_class=<tokenizer with an eos_token> or set model.config.eos_token_id")
    dtype = token_dtype(vocab_size)  # 2 or 4 bytes a token in memory
    parts, starts, total = [], [], 0
    for ids, lengths in batches:
        check_ids(ids, what, vocab_size)
        ends = np.cumsum(lengths)  # (D,)
        nonempty = lengths > 0
        add = nonempty.copy()
        add[nonempty] = ids[ends[nonempty] - 1] != eos
        ids = np.insert(ids, ends[add], eos)  # eos after document i: before the first id of document i + 1
        lengths = (lengths + add)[nonempty]
        starts.append(total + np.cumsum(lengths) - lengths)
        parts.append(ids.astype(dtype))
        total += len(ids)
    if total == 0:
        raise DataError(f"{what} is empty (no documents, or only empty ones); give it some text")
    return ArrayStream(np.concatenate(parts)), np.concatenate(starts).astype(np.int64)


def list_batches(docs: list, what: str, tokenizer) -> object:
    """A list of documents (id lists, arrays, tensors, or texts) as batches of (ids, lengths)."""
    for i in range(0, len(docs), TOKENIZE_BATCH):
        batch = docs[i:i + TOKENIZE_BATCH]
        if all(isinstance(d, str) for d in batch):
            if tokenizer is None:
                raise DataError(f"{what} holds text and no tokenizer was given; pass processing_class=<tokenizer> "
                                "(e.g. AutoTokenizer.from_pretrained(...)), or token ids")
            batch = tokenizer(batch)["input_ids"]
        arrays = [d.detach().cpu().numpy() if isinstance(d, Tensor) else np.asarray(d) for d in batch]
        arrays = [a if a.size else np.zeros(0, dtype=np.int64) for a in arrays]  # np.asarray([]) is float
        if any(a.ndim != 1 for a in arrays):
            raise DataError(f"{what} mixes documents with other things; give a list of documents, each a list of "
                            "token ids (or each a text, with processing_class=)")
        lengths = np.array([len(a) for a in arrays], dtype=np.int64)
        ids = np.concatenate(arrays) if lengths.sum() else np.zeros(0, dtype=np.int64)
        yield ids, lengths


def dataset_batches(ds, column: str | None, what: str, tokenizer) -> object:
    """A `datasets.Dataset`'s documents as batches of (ids, lengths): a column of token-id lists,
    read through Arrow without a Python list per document, or a text column, tokenized first with
    `Dataset.map(batched=True)` (the tokenizer's own special tokens kept, e.g. a Llama BOS)."""
    import pyarrow as pa

    names = ds.column_names
    if column is None:
        column = "input_ids" if "input_ids" in names else "text" if "text" in names else None
    if column not in names:
        wanted = repr(column) if column else "'input_ids' or 'text'"
        raise DataError(f"{what} has no {wanted} column (it has: {', '.join(names) or 'none'}); name its token-id or "
                        "text column with dataset_column=")
    if len(ds) == 0:
        raise DataError(f"{what} is empty (0 rows); give it some text")
    kind = ds.data.schema.field(column).type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        if tokenizer is None:
            raise DataError(f"{what}'s column {column!r} holds text and no tokenizer was given; pass "
                            "processing_class=<tokenizer> (e.g. AutoTokenizer.from_pretrained(...)), or a column "
                            "of token ids")
        ds = ds.map(lambda b: {"input_ids": tokenizer(b[column])["input_ids"]}, batched=True,
                    batch_size=TOKENIZE_BATCH, remove_columns=names, desc=f"tokenizing {what}")
        column, kind = "input_ids", ds.data.schema.field("input_ids").type
    if not (pa.types.is_list(kind) or pa.types.is_large_list(kind)) or not pa.types.is_integer(kind.value_type):
        raise DataError(f"{what}'s column {column!r} holds {kind}, not a list of integer token ids per document; "
                        "name the right column with dataset_column=, or give text with processing_class=")
    for table in ds.with_format("arrow").iter(batch_size=10_000):  # respects select / shuffle / filter
        docs = table.column(column).combine_chunks()
        yield docs.flatten().to_numpy(), docs.value_lengths().fill_null(0).to_numpy().astype(np.int64)


def token_source(data, *, what: str, tokenizer=None, column: str | None = None, eos: int | None = None,
                 vocab_size: int, split: str = "train"):
    """(stream, doc_starts) for whatever a user passes as train_dataset / eval_dataset:

        a datasets.Dataset       a column of token-id lists (`input_ids` unless `column=`), or a
                                 text column (`text`) tokenized with `tokenizer`
        a list of documents      id lists / arrays / tensors, or texts with `tokenizer`
        a 2-D array or tensor    one document a row
        a 1-D array, tensor or   ids already joined; documents start after each eos token
          list of ids
        open_dataset(path)       its `split` ("train" or "val"), its own document offsets
        open_dataset(path).train a stream read in place (memory-mapped); documents as 1-D arrays

    Documents are joined with `eos` into an in-memory stream; ids are checked against vocab_size.
    """
    datasets = sys.modules.get("datasets")  # loaded if and only if the caller could have made a Dataset
    if isinstance(data, DataDirectory):
        if data.vocab_size > vocab_size:
            raise DataError(f"{what} ({data.path}) has a vocabulary of {data.vocab_size}, more than the model's "
                            f"{vocab_size}; train a model with vocab_size >= {data.vocab_size}")
        if split == "val":
            return data.val, np.zeros(1, dtype=np.int64)
        return data.train, data.train_docs.astype(np.int64)
    if is_stream(data):
        return data, doc_starts_at_eos(data, eos)
    if datasets is not None and isinstance(data, datasets.Dataset):
        return pack(dataset_batches(data, column, what, tokenizer), eos, what, vocab_size)
    if datasets is not None and isinstance(data, (datasets.IterableDataset, datasets.IterableDatasetDict)):
        raise DataError(f"{what} is a streaming datasets.IterableDataset; TSTTrainer packs and shuffles the whole "
                        "dataset: load it with streaming=False, or `superpose prepare --hf-dataset` it")
    if isinstance(data, dict):  # a DatasetDict too
        raise DataError(f"{what} is a dict of splits ({', '.join(map(str, data))}); pass one split, e.g. "
                        f"{what}=ds['{next(iter(data), 'train')}']")
    if isinstance(data, (np.ndarray, Tensor)) and data.ndim == 2:
        data = list(data)
    if isinstance(data, (list, tuple)):
        if not data:
            raise DataError(f"{what} is empty (an empty list); give it some documents")
        if not isinstance(data[0], (int, np.integer)):
            return pack(list_batches(list(data), what, tokenizer), eos, what, vocab_size)
    if isinstance(data, (np.ndarray, Tensor, list, tuple)):
        stream = ArrayStream(flat_ids(data, what, vocab_size))
        if stream.num_tokens == 0:
            raise DataError(f"{what} is empty (no token ids); give it some text")
        return stream, doc_starts_at_eos(stream, eos)
    raise DataError(f"{what} is a {type(data).__module__}.{type(data).__name__}; TSTTrainer takes a "
                    "datasets.Dataset, a list of documents (token-id lists), a 1-D array of token ids, or "
                    "superpose.data.open_dataset(...)")
