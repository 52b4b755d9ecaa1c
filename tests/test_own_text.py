"""Issue 35: a user's own text, the first time. A source of one document (one text file, several
of them, a one-line .jsonl, a one-row parquet) holds out the tail of its text, recorded in
meta.json and never in the train split; raw text given as --data.path is prepared once into a
cache keyed by its bytes; every message advising `superpose prepare` names the text as --text and
never as --out.

Run: .venv/bin/pytest tests/test_own_text.py
"""

from __future__ import annotations

import json
import shlex

import pytest
from tokenizers import Tokenizer

from superpose.config import Config, DataConfig
from superpose.data import corpus, open_dataset
from superpose.data.prepare import prepare
from superpose.errors import UserError

from conftest import make_documents


def numbered_text(n_lines: int, start: int = 0) -> str:
    """Paragraph lines each holding a unique number: a held-out line found in train shows a leak."""
    return "\n".join(f"line{i:05d} " + doc for i, doc in zip(range(start, start + n_lines), make_documents(n_lines, 7)))


def decoded(ds, split) -> str:
    tok = Tokenizer.from_file(str(ds.tokenizer_path))
    stream = getattr(ds, split)
    return tok.decode([int(i) for i in stream.read(0, stream.num_tokens) if i != ds.eot_id])


def test_one_file_holds_out_its_tail_recorded_and_never_trained_on(tmp_path):
    text = numbered_text(300)
    (tmp_path / "input.txt").write_text(text)
    lines: list[str] = []
    out = prepare(tmp_path / "d", corpus.text_sources([tmp_path / "input.txt"]), vocab_size=300, log=lines.append)
    ds = open_dataset(out)
    source = ds.meta["sources"][0]
    cut = source["val_tail_from"]
    assert isinstance(cut, int) and 0.97 * len(text) <= cut < len(text)
    assert text[cut:].strip() == decoded(ds, "val").strip()  # the val split is exactly the tail
    held = {w for w in decoded(ds, "val").split() if w.startswith("line")}
    trained = {w for w in decoded(ds, "train").split() if w.startswith("line")}
    assert held and not held & trained
    assert any(line.startswith("validation: the last 2% of") and "since it is one document" in line for line in lines)
    # Deterministic: the same text splits the same way, to the same bytes.
    again = prepare(tmp_path / "e", corpus.text_sources([tmp_path / "input.txt"]), vocab_size=300, log=lambda _: None)
    assert json.loads((again / "meta.json").read_text())["files"] == ds.meta["files"]


def test_single_document_files_jsonl_and_parquet_each_hold_out_a_tail(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    (tmp_path / "a.txt").write_text(numbered_text(80))
    (tmp_path / "b.txt").write_text(numbered_text(80, 1000))
    (tmp_path / "c.jsonl").write_text(json.dumps({"text": numbered_text(80, 2000)}) + "\n")
    pq.write_table(pa.table({"text": [numbered_text(80, 3000)]}), tmp_path / "d.parquet")
    paths = [tmp_path / name for name in ("a.txt", "b.txt", "c.jsonl", "d.parquet")]
    ds = open_dataset(prepare(tmp_path / "out", corpus.text_sources(paths), vocab_size=300, log=lambda _: None))
    assert all(isinstance(s["val_tail_from"], int) and s["documents"] == 1 for s in ds.meta["sources"])
    assert ds.meta["splits"]["val"]["documents"] == 4


def test_a_document_too_short_to_cut_is_still_refused_in_one_line(tmp_path):
    (tmp_path / "tiny.txt").write_text("just one short line")
    with pytest.raises(UserError, match="single document too short"):
        prepare(tmp_path / "d", corpus.text_sources([tmp_path / "tiny.txt"]), vocab_size=300, log=lambda _: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.txt"]


def test_raw_text_is_prepared_once_into_a_cache_keyed_by_its_bytes(tmp_path):
    from superpose.data.own_text import data_directory

    text, cache = tmp_path / "input.txt", tmp_path / "cache"
    text.write_text(numbered_text(200))
    lines: list[str] = []
    first = data_directory(str(text), cache, lines.append)
    assert first.parent == cache and open_dataset(first).meta["sources"][0]["val_tail_from"]
    said = next(line for line in lines if "preparing it once" in line)
    command = shlex.split(said.split("as: ", 1)[1])
    assert command[:3] == ["superpose", "prepare", "--text"] and command[3] == str(text)
    assert command[command.index("--out") + 1] == str(first)
    lines.clear()
    assert data_directory(str(text), cache, lines.append) == first  # reused, not prepared again
    assert any("prepared copy" in line for line in lines) and not any("preparing" in line for line in lines)
    text.write_text(numbered_text(201))  # changed text: a new copy
    assert data_directory(str(text), cache, lambda _: None) != first
    # A folder of text files, and two paths joined by a comma, are text too.
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "x.txt").write_text(numbered_text(120))
    assert data_directory(str(tmp_path / "docs"), cache, lambda _: None).parent == cache
    assert data_directory(f"{text},{tmp_path / 'docs'}", cache, lambda _: None).parent == cache
    # A prepared directory is itself, and nothing is written beside the user's text.
    assert data_directory(str(first), cache, lambda _: None) == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "docs", "input.txt"]


def test_train_compare_and_sweep_resolve_raw_text_to_the_prepared_copy(tmp_path, monkeypatch):
    from superpose.training import resolve_data, resolve_from_data

    monkeypatch.setenv("SUPERPOSE_CACHE", str(tmp_path / "cache"))
    (tmp_path / "input.txt").write_text(numbered_text(200))
    cfg = Config(data=DataConfig(path=str(tmp_path / "input.txt")))
    ds = resolve_data(cfg, log=lambda _: None)
    assert ds.path.parent == tmp_path / "cache" / "data"
    assert resolve_from_data(cfg, ds).data.path == str(ds.path.absolute())  # the run records the directory


@pytest.mark.parametrize("make", ["file", "folder", "missing", "run"])
def test_advice_names_the_text_as_text_and_never_as_out(tmp_path, make):
    path = tmp_path / {"file": "input.txt", "folder": "docs", "missing": "nope", "run": "run"}[make]
    if make == "file":
        path.write_text("some text\n")
    elif make == "folder":
        path.mkdir()
        (path / "a.txt").write_text("some text\n")
    elif make == "run":
        path.mkdir()
        (path / "config.json").write_text("{}")
        (path / "metrics.jsonl").write_text("{}\n")
    with pytest.raises(UserError) as e:
        open_dataset(path)
    command = shlex.split(str(e.value).split("with: ", 1)[1])
    assert command[:2] == ["superpose", "prepare"] and "--text" in command
    text, out = command[command.index("--text") + 1], command[command.index("--out") + 1]
    assert out != str(path) or make == "missing"  # never the user's text (a missing path is nobody's)
    assert text == (str(path) if make in ("file", "folder") else "YOUR_TEXT")


def test_raw_text_that_is_token_ids_is_refused_before_it_is_hashed_or_cached(tmp_path):
    from superpose.data.own_text import data_directory

    (tmp_path / "train.bin").write_bytes(bytes(range(256)) * 4)  # a nanoGPT .bin given as --data.path
    with pytest.raises(UserError) as e:
        data_directory(str(tmp_path / "train.bin"), tmp_path / "cache", lambda _: None)
    command = shlex.split(str(e.value).split("import it with ", 1)[1])
    assert command[command.index("--tokens") + 1] == str(tmp_path / "train.bin")
    assert command[command.index("--out") + 1] == str(tmp_path / "train-data")
    assert not (tmp_path / "cache").exists()
