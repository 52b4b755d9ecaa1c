"""Raw text where a prepared data directory is expected (`--data.path` of train, compare and
sweep): prepared once, with prepare's defaults, into $SUPERPOSE_CACHE/data/text-KEY, and reused.

KEY is a hash of the text's bytes (and the files' names within what was given), so a second run on
the same text reuses the prepared copy wherever the text lies, and changed text makes a new one.
Hashing gigabytes on every run would cost seconds, so a stamp keyed by the files' real paths,
sizes and modification times remembers the content key: unchanged files are not read again.

What "raw text" is: whatever `superpose prepare --text` reads (a file, a folder of text files, a
datasets save_to_disk folder; several of them joined by commas), as long as it is not a prepared
directory or a superpose folder that lost its meta.json (those keep open_dataset's message).
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
from collections.abc import Callable
from pathlib import Path

from ..files import write_text
from . import corpus
from .datasets_text import is_datasets_folder
from .prepare import prepare_once
from .shards import is_prepared

KEY_VERSION = 1  # the prepare defaults and split rules a key stands for: bump to re-prepare every text


def data_directory(path: str, cache: Path, log: Callable[[str], None] = print) -> Path:
    """The data directory `--data.path PATH` names: PATH itself when it is one (or anything that
    is not text, for open_dataset to explain), else PATH's text prepared into `cache` (once)."""
    paths = text_paths(path)
    if paths is None:
        return Path(path)
    sources = corpus.text_sources(paths, log=log)  # what is not text is refused before a byte of it is hashed
    out = cache / f"text-{content_key(paths, cache)[:16]}"
    command = shlex.join(["superpose", "prepare", "--text", *map(str, paths), "--out", str(out)])
    if is_prepared(out):
        log(f"data: {path} is raw text; training on its prepared copy in {out} (made as by: {command})")
        return out
    log(f"data: {path} is raw text, not a prepared data directory; preparing it once into {out}, as: {command}")
    return prepare_once(out, lambda: sources, log)


def text_paths(path: str) -> list[Path] | None:
    """The text `--data.path` names (several joined by commas), or None when it is not text."""
    if not path or is_prepared(Path(path)):
        return None
    names = [path] if os.path.exists(path) or "," not in path else path.split(",")
    paths = [Path(name) for name in names]
    return paths if all(map(corpus.is_text, paths)) else None


def content_key(paths: list[Path], cache: Path) -> str:
    """sha256 of the text's bytes, each file's name within the path it was given by, and
    KEY_VERSION; remembered under a stamp of the files' real paths, sizes and mtimes."""
    files = [(p, f) for p in paths for f in _files(p)]
    stats = [(os.path.realpath(f), f.stat().st_size, f.stat().st_mtime_ns) for _, f in files]
    stamp = cache / "text-keys" / hashlib.sha256(json.dumps([KEY_VERSION, stats]).encode()).hexdigest()
    try:
        return stamp.read_text().strip()
    except OSError:
        pass
    h = hashlib.sha256(f"superpose-text-v{KEY_VERSION}".encode())
    for p, f in files:
        h.update(f"\0{f.relative_to(p) if f != p else f.name}\0{f.stat().st_size}\0".encode())
        with open(f, "rb") as data:
            while block := data.read(1 << 20):
                h.update(block)
    key = h.hexdigest()
    stamp.parent.mkdir(parents=True, exist_ok=True)
    write_text(stamp, key + "\n")
    return key


def _files(path: Path) -> list[Path]:
    if path.is_dir() and is_datasets_folder(path):
        return sorted(f for f in path.rglob("*") if f.is_file())
    return corpus.text_files(path)
