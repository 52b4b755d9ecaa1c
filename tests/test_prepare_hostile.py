"""Issue 31 item 5: prepare never double-counts and never hangs. A file given twice under two
spellings is read once; a pipe is refused instead of read twice (or waited on forever); UTF-16
text is read as text; a table's text column of numbers is named; an empty --hf-dataset is refused;
an unreadable folder is one line; a full disk before the first shard keeps nothing; a kill during
the mutual-information step leaves no data directory without its mi.json.

Run: .venv/bin/pytest tests/test_prepare_hostile.py
"""

from __future__ import annotations

import errno
import os
import pathlib
import threading

import pytest

from superpose.data import corpus, mutual_info, open_dataset
from superpose.data.prepare import prepare
from superpose.errors import UserError

from conftest import make_documents

EOT = "\n<|endoftext|>\n"


def quiet(_):
    pass


def write_docs(path: pathlib.Path, n: int, seed: int, encoding: str = "utf-8") -> list[str]:
    docs = make_documents(n, seed)
    path.write_text(EOT.join(docs), encoding=encoding)
    return docs


def test_a_file_given_twice_is_read_once_and_said(tmp_path):
    (tmp_path / "texts").mkdir()
    a = tmp_path / "texts" / "a.txt"
    write_docs(a, 40, 1)
    lines: list[str] = []
    for given in ([a, tmp_path / "texts" / ".." / "texts" / "a.txt"], [tmp_path / "texts", a]):
        lines.clear()
        sources = corpus.text_sources(given, log=lines.append)
        assert len(sources) == 1, given
        assert any("given twice" in line and "reading it once" in line for line in lines)
    out = prepare(tmp_path / "d", corpus.text_sources([a, tmp_path / "texts"], log=quiet), vocab_size=300, log=quiet)
    assert sum(s["documents"] for s in open_dataset(out).meta["sources"]) == 40


def test_a_pipe_is_refused_at_once_not_waited_on(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got: list[BaseException] = []
    worker = threading.Thread(target=lambda: got.append(pytest.raises(UserError, corpus.text_sources, [fifo]).value),
                              daemon=True)  # the old code blocked in open(): the thread is left behind
    worker.start()
    worker.join(timeout=20)
    assert got and "pipe" in str(got[0]) and "save it to a file first" in str(got[0])


@pytest.mark.parametrize("encoding", ["utf-16", "utf-32"])
def test_utf16_and_utf32_text_with_a_byte_order_mark_is_read_as_text(tmp_path, encoding):
    docs = write_docs(tmp_path / "win.txt", 30, 2, encoding)
    (tmp_path / "win.jsonl").write_text("".join(f'{{"text": "{d}"}}\n' for d in docs), encoding=encoding)
    for name in ("win.txt", "win.jsonl"):
        (source,) = corpus.text_sources([tmp_path / name])
        assert list(source.iter_documents()) == docs


def test_utf16_without_a_mark_says_what_to_do(tmp_path):
    (tmp_path / "bare.txt").write_bytes("plain words".encode("utf-16-le"))
    with pytest.raises(UserError, match="UTF-16 text without a byte-order mark, re-save it as UTF-8"):
        corpus.text_sources([tmp_path / "bare.txt"])


@pytest.mark.parametrize("column", [[1, 2, 3], [["a"], ["b"], ["c"]]], ids=["ints", "lists"])
def test_a_table_column_that_is_not_text_is_named(tmp_path, column):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": column, "body": ["x", "y", "z"]}), tmp_path / "t.parquet")
    (source,) = corpus.text_sources([tmp_path / "t.parquet"])
    with pytest.raises(UserError, match=r"column 'text' holds (int64|list<\w+: string>), not text.*--text-field"):
        list(source.iter_documents())


@pytest.mark.parametrize("flag", ["--hf-dataset", "--text", "--tokenizer"])
def test_an_empty_input_name_is_refused_not_read_as_the_default_corpus_or_dot(tmp_path, monkeypatch, capsys, flag):
    from superpose import cli
    from superpose.data import default_corpus

    def never(*a, **k):
        raise AssertionError("the default corpus was built")

    monkeypatch.setattr(default_corpus, "default_sources", never)
    monkeypatch.chdir(tmp_path)  # Path("") is "."; the old code read the working directory as the text
    extra = ["--text", str(tmp_path)] if flag == "--tokenizer" else []
    assert cli.main(["prepare", "--out", str(tmp_path / "d"), flag, "", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{flag} got an empty name" in err
    assert not (tmp_path / "d").exists()


def test_an_unreadable_folder_is_one_line(tmp_path, monkeypatch):
    """As a user without permission sees it (the tests may run as root, whom no mode stops): a
    stat inside the folder fails with EACCES."""
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "a.txt").write_text("words\n")
    real = pathlib.Path.stat

    def stat(self, **kw):
        if self.parent == locked:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real(self, **kw)

    monkeypatch.setattr(pathlib.Path, "stat", stat)
    with pytest.raises(UserError, match=r"cannot read .*locked.* \(Permission denied\); make it readable"):
        corpus.text_sources([locked])


def test_a_full_disk_before_the_first_shard_keeps_nothing(tmp_path, monkeypatch):
    from superpose.data import shards

    def full(self, tokens, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    write_docs(tmp_path / "a.txt", 50, 3)
    monkeypatch.setattr(shards.ShardWriter, "write", full)
    with pytest.raises(UserError, match="nothing is kept"):
        prepare(tmp_path / "d", corpus.text_sources([tmp_path / "a.txt"]), vocab_size=300, log=quiet)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]  # no .d.partial, as the message says


def test_a_kill_during_the_mutual_information_step_leaves_no_directory_without_mi(tmp_path, monkeypatch):
    write_docs(tmp_path / "a.txt", 200, 4)
    real = mutual_info.measure

    def killed(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(mutual_info, "measure", killed)
    with pytest.raises((UserError, KeyboardInterrupt)):
        prepare(tmp_path / "d", corpus.text_sources([tmp_path / "a.txt"]), vocab_size=300, log=quiet)
    assert not (tmp_path / "d").exists() or (tmp_path / "d" / "mi.json").is_file()
    monkeypatch.setattr(mutual_info, "measure", real)
    out = prepare(tmp_path / "d", corpus.text_sources([tmp_path / "a.txt"]), vocab_size=300, log=quiet)
    assert (out / "mi.json").is_file() and (out / "mi.png").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "d"]
