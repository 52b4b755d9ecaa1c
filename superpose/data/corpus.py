"""Raw text documents from the user's own text: files, folders, `datasets` folders, hub names.

A `Source` is documents, in memory (the default corpus, `default_corpus.py`) or streamed; every
reader here streams, one document at a time when prepare asks, so a corpus larger than memory is
never held whole. Tokenization and sharding happen elsewhere (prepare.py). What each format
yields, one document each:
  .txt .md .text (also .gz / .zst)      the file, cut at lines holding only <|endoftext|>
  .jsonl .json (also .gz / .zst)        one JSON object per line, its `text_field`
  .parquet, .arrow                      each row's `text_field` column (pyarrow, batch by batch)
  a `datasets.save_to_disk` folder      each row's `text_field` (datasets.load_from_disk)
  a Hugging Face dataset name           `hub_source`: datasets.load_dataset(..., streaming=True)
The last two read through the datasets library (datasets_text.py).
"""

from __future__ import annotations

import contextlib
import gzip
import io
import itertools
import json
import os
import re
import shlex
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from .datasets_text import disk_documents, hub_documents, is_datasets_folder


@dataclass
class Source:
    """A source of raw text, as documents (not to be confused with `inference.load.ModelFiles`)."""

    name: str  # "wikipedia-summaries", "gcide", or the user's file/folder name
    license: str  # e.g. "CC BY-SA 4.0", "GPL-3.0-or-later", "user-provided"
    credit: str  # one line: where the text came from
    documents: list[str] | Callable[[], Iterator[str]]
    """A list (small sources, held in memory: the default corpus) or a function returning a fresh
    iterator over the documents (user files and datasets, streamed: never held whole)."""
    size_bytes: int | None = None
    """Bytes of input behind the documents when known (files on disk), for progress and ETA."""

    @property
    def in_memory(self) -> bool:
        return isinstance(self.documents, list)

    def iter_documents(self) -> Iterator[str]:
        return iter(self.documents) if self.in_memory else self.documents()


# ---------------------------------------------------------------- the formats

_END_OF_TEXT = re.compile(r"^[ \t]*<\|endoftext\|>[ \t]*\r?$", re.MULTILINE)
_COMPRESSED = {".gz": "gzip", ".zst": "zstd"}
_TOKEN_FILES = (".bin", ".npy")
_MAGIC = {b"\x1f\x8b": "gzip", b"\x28\xb5\x2f\xfd": "zstd", b"PAR1": "parquet", b"\x93NUMPY": "numpy",
          b"PK\x03\x04": "zip", b"BZh": "bzip2", b"\xfd7zXZ": "xz"}


def _kind(path: Path) -> tuple[str | None, str | None]:
    """(format, compression) from the file name: (a FORMATS key or None, "gzip" | "zstd" | None)."""
    suffixes = [s.lower() for s in path.suffixes[-2:]]
    compression = _COMPRESSED.get(suffixes[-1]) if suffixes else None
    inner = suffixes[-2] if compression and len(suffixes) == 2 else (suffixes[-1] if suffixes else "")
    for name, fmt in FORMATS.items():
        if inner in fmt.suffixes and (fmt.compressible or not compression):
            return name, compression if fmt.compressible else None
    return None, None


@contextlib.contextmanager
def _open_text(path: Path, compression: str | None) -> Iterator:
    """A binary file object of the decompressed bytes. A read that fails inside the block (a
    truncated .gz, a corrupt .zst, an I/O error) is one UserError naming the file: the
    decompressors raise EOFError, zlib.error, gzip.BadGzipFile or zstandard.ZstdError, mid-stream."""
    errors: tuple[type[BaseException], ...] = (EOFError, OSError, zlib.error)
    if compression == "gzip":
        f = gzip.open(path, "rb")
    elif compression == "zstd":
        try:
            import zstandard
        except ImportError:
            raise UserError(f"{path} is zstd-compressed; install zstandard (pip install 'superpose[data]') or "
                            "decompress it") from None
        errors += (zstandard.ZstdError,)
        f = zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True)
    else:
        f = open(path, "rb")
    try:
        with f:
            yield f
    except errors as exc:
        what = f"{compression} data is truncated or corrupt" if compression else "it cannot be read"
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"cannot read {path}: {what} ({detail}); re-download or re-create the file, or leave it "
                        "out") from None


# Byte-order marks of the UTF-16/32 that Windows editors save as "Unicode" (UTF-32 first: its
# little-endian mark begins with UTF-16's).
_BOMS = ((b"\xff\xfe\x00\x00", "utf-32"), (b"\x00\x00\xfe\xff", "utf-32"), (b"\xff\xfe", "utf-16"),
         (b"\xfe\xff", "utf-16"))


def _encoding(head: bytes) -> str:
    """The encoding a file's first bytes say: UTF-16/32 by their byte-order mark, else UTF-8 (with
    or without its own mark)."""
    return next((encoding for bom, encoding in _BOMS if head.startswith(bom)), "utf-8-sig")


def _decoded(raw, newline: str | None = None) -> io.TextIOWrapper:
    """The text of a binary stream, in the encoding its first bytes say (`_encoding`)."""
    buffered = io.BufferedReader(raw)
    return io.TextIOWrapper(buffered, encoding=_encoding(buffered.peek(4)[:4]), errors="strict", newline=newline)


def _not_decodable(path: Path, exc: UnicodeDecodeError, where: str = "") -> UserError:
    name = "UTF-8" if exc.encoding.startswith("utf-8") else exc.encoding.upper()
    return UserError(f"{path}{where} is not valid {name} (bad bytes near offset {exc.start}); re-save it as UTF-8")


def _sniff(path: Path, compression: str | None) -> None:
    """Refuse, in one line naming the file, bytes that are not what the name says: compressed
    data without .gz/.zst, a parquet or numpy file under a text name, or binary (NUL bytes)."""
    try:
        with open(path, "rb") as f:
            head = f.read(8192)
    except OSError as exc:
        raise UserError(f"cannot read {path} ({exc.strerror}); check that it is readable") from None
    if compression or _encoding(head) != "utf-8-sig":  # UTF-16/32 text has NUL bytes; its mark says what it is
        return
    for magic, what in _MAGIC.items():
        if head.startswith(magic):
            hint = {"gzip": "name it .gz", "zstd": "name it .zst", "parquet": "name it .parquet",
                    "numpy": f"import its token ids with {_import_command(path)}"}.get(
                what, "decompress it first")
            raise UserError(f"{path} holds {what} data, not text; {hint}")
    if b"\x00" in head:
        raise UserError(f"{path} is binary (it has NUL bytes), not UTF-8 text; if it is UTF-16 text without a "
                        "byte-order mark, re-save it as UTF-8; if it holds token ids (a nanoGPT .bin), import it with "
                        + _import_command(path))


def _plain_documents(path: Path, compression: str | None, field: str) -> Iterator[str]:
    """Line by line, so memory holds one document, not the file (no field: the whole text)."""
    doc: list[str] = []
    with _open_text(path, compression) as raw:
        try:
            for line in _decoded(raw, newline=""):
                if _END_OF_TEXT.fullmatch(line.rstrip("\n")):
                    if "".join(doc).strip():
                        yield "".join(doc).strip()
                    doc = []
                else:
                    doc.append(line)
        except UnicodeDecodeError as exc:
            raise _not_decodable(path, exc) from None
    if "".join(doc).strip():
        yield "".join(doc).strip()


def _line_documents(path: Path, compression: str | None, field: str) -> Iterator[str]:
    with _open_text(path, compression) as raw:
        try:
            for number, line in enumerate(_decoded(raw), start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    record = None
                if not isinstance(record, dict) or not isinstance(record.get(field), str):
                    keys = f" (it has {', '.join(sorted(record)[:6])})" if isinstance(record, dict) else ""
                    raise UserError(f'{path} line {number} is not a JSON object with a string "{field}" field{keys}; '
                                    f"write one {{\"{field}\": \"...\"}} object per line or name the field with "
                                    "--text-field")
                if record[field].strip():
                    yield record[field].strip()
        except UnicodeDecodeError as exc:
            raise _not_decodable(path, exc) from None


def _column(table_path: Path, schema, field: str) -> None:
    """Refuse a table without a text column `field` (missing, or of numbers or lists), naming its columns."""
    import pyarrow as pa

    names = schema.names
    if field not in names:
        raise UserError(f"{table_path} has no column {field!r} (it has {', '.join(names[:8])}); name the text column "
                        "with --text-field")
    kind = schema.field(field).type
    value = kind.value_type if pa.types.is_dictionary(kind) else kind
    if not (pa.types.is_string(value) or pa.types.is_large_string(value)):
        raise UserError(f"{table_path} column {field!r} holds {kind}, not text (its columns: {', '.join(names[:8])}); "
                        "name the text column with --text-field")


def _table_documents(path: Path, compression: None, field: str) -> Iterator[str]:
    """A table is read column-wise by pyarrow, never compressed on top."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if path.suffix.lower() == ".parquet":
            pf = pq.ParquetFile(path)
            _column(path, pf.schema_arrow, field)
            batches = pf.iter_batches(batch_size=2048, columns=[field])
        else:  # .arrow: an IPC stream (what datasets writes) or an IPC file
            try:
                reader = pa.ipc.open_stream(pa.memory_map(str(path)))
            except pa.ArrowInvalid:
                reader = pa.ipc.open_file(pa.memory_map(str(path)))
                reader = (reader.get_batch(i) for i in range(reader.num_record_batches))
            batches = reader
            first = next(iter(batches), None)
            if first is None:
                return
            _column(path, first.schema, field)
            batches = itertools.chain([first], batches)
        for batch in batches:
            for text in batch.column(field).to_pylist():
                if isinstance(text, str) and text.strip():
                    yield text.strip()
    except (pa.ArrowInvalid, OSError) as exc:
        raise UserError(f"cannot read {path} as {path.suffix[1:]} ({str(exc).splitlines()[0]}); check the file") from None


def text_files(path: Path) -> list[Path]:
    """The files prepare reads from `path`: the file itself, or a folder's text files (recursively,
    sorted, hidden ones left out); [] for a folder without any."""
    if not path.is_dir():
        return [path]
    return sorted(f for f in path.rglob("*") if f.is_file() and _kind(f)[0] is not None
                  and not any(part.startswith(".") for part in f.relative_to(path).parts))


# Files of superpose's own folders (a data directory, a run, an exported model): a folder holding
# one is not the user's text, even though its .json and .jsonl files have text names.
OWN_FILES = ("meta.json", "tokenizer.json", "config.json", "train.docs.npy", "metrics.jsonl", "model.safetensors")


def is_text(path: Path) -> bool:
    """Whether `path` is the user's text as prepare --text reads it: a file (its bytes are checked
    when read), a datasets save_to_disk folder, or a folder of text files that is none of
    superpose's own folders."""
    if path.is_file():
        return True
    if not path.is_dir() or any((path / name).exists() for name in OWN_FILES) or any(path.glob("*-0000*.bin")):
        return False
    return is_datasets_folder(path) or bool(text_files(path))


def data_dir_for(text: Path) -> Path:
    """A data directory's name beside the user's text: input.txt -> input-data, docs/ -> docs-data."""
    return text.with_name(f"{text.stem if text.is_file() else text.name}-data")


def prepare_command(text: str | Path = "YOUR_TEXT", out: str | Path = "DATA_DIR", *flags: str) -> str:
    """The `superpose prepare` command a message advises, shell-quoted: the user's text is --text,
    never --out."""
    return shlex.join(["superpose", "prepare", *flags, "--text", str(text), "--out", str(out)])


def _import_command(tokens: Path) -> str:
    """The `superpose prepare --tokens` command for a file of token ids given as text."""
    return shlex.join(["superpose", "prepare", "--tokens", str(tokens), "--tokenizer", "TOKENIZER", "--out",
                       str(data_dir_for(tokens))])


def _file_documents(path: Path, field: str) -> Iterator[str]:
    kind, compression = _kind(path)
    if kind is None:
        if path.suffix.lower() in _TOKEN_FILES:
            raise UserError(f"{path} holds token ids, not text; import it with {_import_command(path)}")
        kind = "plain"  # an unknown name: read it as text, if its bytes are text
    if FORMATS[kind].compressible:
        _sniff(path, compression)
    yield from FORMATS[kind].read(path, compression, field)


@dataclass(frozen=True)
class Format:
    """A file format of user text: the names it is recognised by and its reader."""

    suffixes: tuple[str, ...]
    read: Callable[[Path, str | None, str], Iterator[str]]
    """(path, compression, text field) -> the file's non-empty documents, stripped, streamed."""
    compressible: bool
    """A byte stream: may come as .gz/.zst, and its first bytes are checked against its name."""


FORMATS = {
    "plain": Format((".txt", ".md", ".text"), _plain_documents, True),
    "lines": Format((".jsonl", ".json"), _line_documents, True),
    "table": Format((".parquet", ".arrow"), _table_documents, False),
}


def text_sources(paths: list[Path], text_field: str = "text", split: str = "train",
                 log: Callable[[str], None] = print) -> list[Source]:
    """One streaming Source per given file or folder (folders are walked recursively, sorted; a
    `datasets` save_to_disk folder is read as a dataset). A file given twice (`a.txt ./a.txt`, a
    file and its folder, a link) is read once, from its first spelling, and the log says so: read
    twice, its documents would land in both splits."""
    if not paths:
        raise UserError("no text paths given; pass --text PATH with a text file or folder")
    sources, seen = [], {}  # seen: real path -> the spelling it was first given by
    for path in map(Path, paths):
        try:
            files = _readable_files(path)
        except OSError as exc:  # a folder without read or search permission, an I/O error
            raise UserError(f"cannot read {exc.filename or path} ({exc.strerror or exc}); make it readable "
                            f"(chmod -R u+rX {path}) or leave it out") from None
        again = [f for f in files if os.path.realpath(f) in seen]
        if again:
            log(f"prepare: {_same_as(again, seen)}; reading {'it' if len(again) == 1 else 'them'} once")
        files = [f for f in files if os.path.realpath(f) not in seen]
        seen.update({os.path.realpath(f): f for f in files})
        if not files:
            continue
        if path.is_dir() and is_datasets_folder(path):
            docs = (lambda p=path: disk_documents(p, text_field, split))
            size = sum(f.stat().st_size for f in path.rglob("*.arrow"))
        else:
            for f in files:  # refuse a mislabelled file now, not after hours of the ones before it
                if FORMATS[_kind(f)[0] or "plain"].compressible:  # an unknown name is read as text
                    _sniff(f, _kind(f)[1])
            docs = (lambda fs=files: (d for f in fs for d in _file_documents(f, text_field)))
            size = sum(f.stat().st_size for f in files)
        sources.append(Source(path.resolve().name, "user-provided", str(path), docs, size))
    return sources


def _readable_files(path: Path) -> list[Path]:
    """What `text_sources` reads of one given path: its text files ([path] for a datasets folder),
    refusing a missing path, a pipe and a folder without text files in one line each."""
    if not path.exists():
        raise UserError(f"{path} does not exist; pass an existing text file or folder")
    if not (path.is_dir() or path.is_file()):  # a FIFO, /dev/fd/N of <(...), a device: opening one may block
        raise UserError(f"{path} is a pipe or a device, not a file: prepare reads its text twice (to train the "
                        f"tokenizer, then to encode it) and a pipe can be read once; save it to a file first "
                        f"(cat {path} > text.txt) and pass --text text.txt")
    if path.is_dir() and is_datasets_folder(path):
        return [path]
    files = text_files(path)
    if not files:
        names = " ".join(x for fmt in FORMATS.values() for x in fmt.suffixes)
        raise UserError(f"{path} contains no text files ({names}, also .gz/.zst), "
                        "and is not a datasets save_to_disk folder; add some or pass the files themselves")
    return files


def _same_as(again: list[Path], seen: dict[str, Path]) -> str:
    """'a.txt is given twice (the same file as ./a.txt)' for the first few files given twice."""
    pairs = [f"{f} is given twice (the same file as {seen[os.path.realpath(f)]})" for f in again[:3]]
    return ", ".join(pairs) + (f" and {len(again) - 3} more" if len(again) > 3 else "")


def hub_source(name: str, config: str | None = None, split: str = "train", text_field: str = "text",
               data_files: list[str] | None = None, streaming: bool = True) -> Source:
    """A Hugging Face dataset by name (`datasets.load_dataset`), streamed: rows are read as prepare
    asks, so a corpus of any size goes through in bounded memory. `name` may also be a builder
    such as "json" or "parquet" with local `data_files`."""
    docs = hub_documents(name, config, split, text_field, data_files, streaming)
    return Source(name, "see the dataset card", f"Hugging Face dataset {name}" + (f" ({config})" if config else ""),
                  docs, None)
