"""The tokenizer side of the data: training a byte-level BPE, reading a tokenizer file, the
end-of-text token every document ends with, the token layout of an encoded document, and the
bytes each token stands for (bits per byte).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..files import sha256_file

EOT = "<|endoftext|>"
EOT_CANDIDATES = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|eot_id|>")


def train_tokenizer(docs, vocab_size: int):
    """A byte-level BPE (GPT-2 style) with one special token, <|endoftext|>, learnt from `docs`
    (a list, or any iterable of strings: it is read once, in a stream)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=[EOT],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(docs, trainer=trainer, length=len(docs) if isinstance(docs, list) else None)
    return tok


def resolve_tokenizer(path: Path) -> Path:
    """A tokenizer.json, or a folder holding one (as Hugging Face ships tokenizers)."""
    path = Path(path)
    if path.is_dir():
        if not (path / "tokenizer.json").is_file():
            raise UserError(f"{path} is a folder without tokenizer.json; pass a `tokenizers` tokenizer.json or a folder "
                            "saved with save_pretrained (a fast tokenizer)")
        return path / "tokenizer.json"
    if not path.is_file():
        raise UserError(f"tokenizer {path} does not exist; pass a tokenizer.json or a folder holding one")
    return path


def template_prefix(tok) -> list[int]:
    """The special tokens the tokenizer's post-processor puts before a text (a Llama-style
    template's BOS; none for superpose's own BPE). Training data carries them at the start of
    every document and generation and evaluation put them before a prompt, so the model sees at
    inference exactly what it trained on, also through the exported tokenizer."""
    probe = "a"
    plain = tok.encode(probe, add_special_tokens=False).ids
    full = tok.encode(probe, add_special_tokens=True).ids
    for start in range(len(full) - len(plain) + 1):
        if full[start:start + len(plain)] == plain:
            return full[:start]
    return []


def load_tokenizer_file(path: Path, fix: str = "pass a tokenizers tokenizer.json"):
    """A `tokenizers.Tokenizer` from a JSON file; a missing or unreadable file is a one-line
    UserError ending in `fix`."""
    from tokenizers import Tokenizer

    if not Path(path).is_file():
        raise UserError(f"tokenizer file {path} does not exist; {fix}")
    try:
        return Tokenizer.from_file(str(path))
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # the Rust side raises a plain Exception on bad JSON, a PanicException
        first = str(e).splitlines()[0] if str(e).strip() else type(e).__name__  # (a BaseException) on worse
        raise UserError(f"cannot load tokenizer {path}: {first}; {fix}") from None


def same_tokenizer(a: Path, b: Path) -> bool:
    """Whether two tokenizer files map the same tokens to the same ids (the same file, or another
    serialisation of the same vocabulary)."""
    if sha256_file(a) == sha256_file(b):
        return True
    return load_tokenizer_file(a).get_vocab() == load_tokenizer_file(b).get_vocab()


def find_eot(tok, name: str | None = None) -> int:
    """The id of the end-of-text token the data puts after every document: `name` when given,
    else the first of EOT_CANDIDATES the tokenizer has."""
    if name is not None:
        idx = tok.token_to_id(name)
        if idx is None:
            raise UserError(f"the tokenizer has no token {name!r}; pass --eot-token with one of its special tokens")
        return idx
    for candidate in EOT_CANDIDATES:
        idx = tok.token_to_id(candidate)
        if idx is not None:
            return idx
    raise UserError(f"the tokenizer has no end-of-text token (looked for {', '.join(EOT_CANDIDATES)}); "
                    "name its end-of-document token with --eot-token")


def token_byte_lengths(tokenizer, vocab_size: int) -> np.ndarray:
    """UTF-8 bytes each token id stands for (0 for special tokens), for bits-per-byte.

    Byte-level BPE tokens are strings over a 256-character alphabet, one character per byte, so
    the byte count is the string length. For other tokenizers decode each id.
    """
    from tokenizers import pre_tokenizers

    alphabet = set(pre_tokenizers.ByteLevel.alphabet())
    special = {t.content for t in tokenizer.get_added_tokens_decoder().values() if t.special}
    out = np.zeros(vocab_size, dtype=np.int64)
    for token, idx in tokenizer.get_vocab(with_added_tokens=True).items():
        if idx >= vocab_size or token in special:
            continue
        out[idx] = len(token) if set(token) <= alphabet else len(tokenizer.decode([idx]).encode("utf-8"))
    return out


def encode_docs(tok, docs: list[str], eot_id: int, prefix: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """-> (tokens (N,) int64, document lengths (len(docs),)): each document as the tokenizer's
    prefix special tokens (BOS for a Llama-style template; none for ours), its text, end-of-text."""
    return ids_to_tokens([e.ids for e in tok.encode_batch_fast(docs, add_special_tokens=False)], eot_id, prefix)


def ids_to_tokens(ids: list[list[int]], eot_id: int, prefix: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Encoded documents' ids (each `.ids` read once: it builds a list) -> (tokens, lengths) as
    `encode_docs` returns them."""
    lens = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=int(lens.sum()))
    ends = np.cumsum(lens)
    flat = np.insert(flat, ends, eot_id)  # eot after each document
    if prefix:
        starts = np.concatenate([[0], ends[:-1] + np.arange(1, len(ends))])  # each document's start, eot included
        flat = np.insert(flat, np.repeat(starts, len(prefix)), np.tile(prefix, len(starts)))
    return flat, lens + 1 + len(prefix)
