"""Real pretraining data (issue 14): every input format prepares (streamed) and trains; a
pre-tokenized corpus imports without re-tokenizing; an interrupted prepare continues to the
same bytes; a BOS-template tokenizer's convention holds from the data to the exported
tokenizer; and every bad input is one line naming the file and the fix.
"""

import gzip
import json

import numpy as np
import pytest

from superpose.data import corpus, open_dataset
from superpose.data import prepare as prep
from superpose.data.prepare import prepare
from superpose.data.token_import import prepare_tokens
from superpose.errors import UserError
from superpose.training import build_trainer

from conftest import make_documents, tiny_config
from test_checkpoint import superpose

DOCS = make_documents(200, 7)


def quiet(msg):
    pass


def token_docs(data) -> list[list[int]]:
    """The train split as documents (lists of ids), cut after each end-of-text."""
    ds = open_dataset(data)
    tokens = ds.train.read(0, ds.train.num_tokens)
    return [d.tolist() for d in np.split(tokens, ds.train_docs[1:])]


def prepared(tmp_path, tiny_data, name, **kw):
    return prepare(tmp_path / name, kw.pop("sources"), tokenizer=tiny_data / "tokenizer.json", val_fraction=0.1,
                   log=quiet, **kw)


def trains(data, tmp_path):
    t = build_trainer(tiny_config(data, train__steps=3, train__threads=1), tmp_path / "run", open_dataset(data),
                      log=quiet)
    t.train(progress=False)
    assert np.isfinite(t.state.last_eval["val_loss"])


@pytest.fixture(scope="module")
def reference(tiny_data, tmp_path_factory):
    """DOCS as plain .txt documents: what every other format must give, token for token."""
    folder = tmp_path_factory.mktemp("ref")
    (folder / "docs.txt").write_text("\n<|endoftext|>\n".join(DOCS))
    data = prepare(folder / "data", corpus.text_sources([folder / "docs.txt"]), tokenizer=tiny_data / "tokenizer.json",
                   val_fraction=0.1, log=quiet)
    return sorted(map(tuple, token_docs(data)))


def write_format(kind: str, folder, field="text"):
    rows = [{field: d, "id": i} for i, d in enumerate(DOCS)]
    if kind == "jsonl.gz":
        path = folder / "docs.jsonl.gz"
        with gzip.open(path, "wt") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    elif kind == "jsonl.zst":
        import zstandard

        path = folder / "docs.jsonl.zst"
        path.write_bytes(zstandard.ZstdCompressor().compress("".join(json.dumps(r) + "\n" for r in rows).encode()))
    elif kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = folder / "docs.parquet"
        pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=37)
    elif kind in ("datasets-folder", "arrow"):
        import datasets

        path = folder / "saved"
        datasets.Dataset.from_list(rows).save_to_disk(str(path))
        if kind == "arrow":
            path = next(path.glob("*.arrow"))
    return path


@pytest.mark.parametrize("kind", ["jsonl.gz", "jsonl.zst", "parquet", "arrow", "datasets-folder"])
def test_each_format_prepares_the_same_tokens_and_trains(tiny_data, tmp_path, reference, kind):
    field = "content" if kind in ("parquet", "jsonl.gz") else "text"  # --text-field NAME
    path = write_format(kind, tmp_path, field)
    sources = corpus.text_sources([path], text_field=field)
    data = prepared(tmp_path, tiny_data, "data", sources=sources)
    assert sorted(map(tuple, token_docs(data))) == reference  # same documents, same split, same ids
    trains(data, tmp_path)


def test_a_hub_dataset_streams_through_datasets_load_dataset(tiny_data, tmp_path, reference):
    """A dataset by name, streamed (tests use a local builder: nothing leaves the machine)."""
    path = write_format("parquet", tmp_path)
    r = superpose("prepare", "--out", tmp_path / "data", "--hf-dataset", "parquet", "--data-files", path,
                  "--tokenizer", tiny_data, "--val-fraction", "0.1")  # a tokenizer folder, as HF ships them
    assert r.returncode == 0, r.stderr
    assert sorted(map(tuple, token_docs(tmp_path / "data"))) == reference
    trains(tmp_path / "data", tmp_path)


@pytest.mark.parametrize("suffix,dtype", [(".bin", "uint16"), (".npy", None)])
def test_a_pretokenized_corpus_imports_without_retokenizing(tiny_data, tmp_path, suffix, dtype):
    ds = open_dataset(tiny_data)
    ids = ds.train.read(0, ds.train.num_tokens)  # documents, each ending with end-of-text
    path = tmp_path / f"corpus{suffix}"
    np.save(path, ids.astype(np.uint16)) if suffix == ".npy" else ids.astype(np.uint16).tofile(path)
    args = ["prepare", "--out", tmp_path / "data", "--tokens", path, "--tokenizer", tiny_data / "tokenizer.json"]
    r = superpose(*args, *(["--token-dtype", dtype] if dtype else []))
    assert r.returncode == 0, r.stderr
    out = open_dataset(tmp_path / "data")
    got = out.train.read(0, out.train.num_tokens).tolist() + out.val.read(0, out.val.num_tokens).tolist()
    assert sorted(got) == sorted(ids.tolist())  # every token kept, none re-tokenized
    docs = token_docs(tmp_path / "data")
    assert all(d[-1] == ds.eot_id for d in docs) and len(docs) + out.meta["splits"]["val"]["documents"] == \
        int((ids == ds.eot_id).sum())
    trains(tmp_path / "data", tmp_path)


def test_an_interrupted_prepare_continues_to_the_same_bytes(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setattr(prep, "PREPARE_SHARD_TOKENS", 2000)  # many shards, so there is something to keep
    monkeypatch.setattr(prep, "ENCODE_BATCH", 16)
    folder = tmp_path / "texts"
    folder.mkdir()
    for i in range(4):
        (folder / f"{i}.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS[i::4]))
    straight = prepare(tmp_path / "straight", corpus.text_sources([folder]), vocab_size=300, log=quiet)
    calls = {"n": 0}
    real = prep.ShardWriter.end_shard

    def interrupt_after_three(self):
        real(self)
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(prep.ShardWriter, "end_shard", interrupt_after_three)
    with pytest.raises(UserError, match="run the same command again to continue"):
        prepare(tmp_path / "again", corpus.text_sources([folder]), vocab_size=300, log=quiet)
    assert not (tmp_path / "again").exists() and (tmp_path / ".again.partial" / "journal.json").is_file()
    monkeypatch.setattr(prep.ShardWriter, "end_shard", real)
    logs = []
    prepare(tmp_path / "again", corpus.text_sources([folder]), vocab_size=300, log=logs.append)
    # the third shard was closed but not yet journaled when the interrupt came: it is written again
    assert any("continuing an interrupted prepare" in m and "2 shard(s)" in m for m in logs)
    names = sorted(p.name for p in straight.iterdir())
    assert names == sorted(p.name for p in (tmp_path / "again").iterdir()) and len(names) > 8
    for name in names:
        if name not in ("meta.json", "mi.png"):
            assert (straight / name).read_bytes() == (tmp_path / "again" / name).read_bytes(), name
    assert not list(tmp_path.glob(".*partial"))


def test_a_bos_template_is_trained_with_and_exported_as_it_was_trained(tiny_data, tmp_path):
    """A Llama-style tokenizer puts BOS before a text; training sees BOS at the start of every
    document, and the exported tokenizer (AutoTokenizer) gives the model exactly that."""
    import transformers
    from tokenizers import AddedToken, Tokenizer, processors

    tok = Tokenizer.from_file(str(tiny_data / "tokenizer.json"))
    tok.add_special_tokens([AddedToken("<s>", special=True)])
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    tok_dir = tmp_path / "llama-like"
    tok_dir.mkdir()
    tok.save(str(tok_dir / "tokenizer.json"))
    (tmp_path / "t.txt").write_text("\n<|endoftext|>\n".join(DOCS))
    data = prepare(tmp_path / "data", corpus.text_sources([tmp_path / "t.txt"]), tokenizer=tok_dir, log=quiet)
    docs = token_docs(data)
    eot = open_dataset(data).eot_id
    assert all(d[0] == bos and d[-1] == eot and bos not in d[1:] for d in docs)
    assert open_dataset(data).meta["prefix_ids"] == [bos]
    run = tmp_path / "run"
    build_trainer(tiny_config(data, train__steps=2, train__threads=1, tst__ratio=0.0), run, open_dataset(data),
                  log=quiet).train(progress=False)
    r = superpose("export", run, "--hf", tmp_path / "hf")
    assert r.returncode == 0, r.stderr
    auto = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    text = DOCS[0]
    assert auto(text)["input_ids"] == docs_start(tok, text, bos)
    from superpose.inference.load import locate, special_tokens

    assert special_tokens(tok, locate(run)) == {"eot_id": eot, "prefix_ids": [bos]}


def docs_start(tok, text, bos):
    return [bos, *tok.encode(text, add_special_tokens=False).ids]


# gzip's mtime=0: the same bytes, so the same test id, in every pytest-xdist worker (a timestamp
# in the id made workers collect different tests when they started in different seconds).
@pytest.mark.parametrize("name,content,needle", [
    ("tokens.bin", np.arange(100, dtype=np.uint16).tobytes(), "--tokens"),
    ("packed.txt", gzip.compress(b"hello", mtime=0), "holds gzip data, not text; name it .gz"),
    ("table.txt", b"PAR1" + b"\x00" * 20, "holds parquet data"),
    ("nul.txt", b"ab\x00cd", "is binary"),
])
def test_binary_or_mislabelled_files_are_one_line(tmp_path, name, content, needle):
    path = tmp_path / name
    path.write_bytes(content)
    r = superpose("prepare", "--out", tmp_path / "data", "--text", path)
    assert r.returncode == 2 and needle in r.stderr and name in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "data").exists()


def test_bad_inputs_name_the_problem_and_leave_nothing(tiny_data, tmp_path):
    (tmp_path / "d.jsonl").write_text(json.dumps({"body": "x"}) + "\n")
    write_format("parquet", tmp_path)
    (tmp_path / "empty.jsonl").write_text("\n")
    (tmp_path / "noeot").mkdir()
    from tokenizers import Tokenizer, models

    Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]")).save(str(tmp_path / "noeot" / "tokenizer.json"))
    cases = [
        (["--text", tmp_path / "d.jsonl"], 'a string "text" field (it has body)'),
        (["--text", tmp_path / "docs.parquet", "--text-field", "body"], "has no column 'body' (it has text, id)"),
        (["--text", tmp_path / "empty.jsonl"], "holds no non-empty document"),
        (["--text", tmp_path / "d.jsonl", "--tokenizer", tmp_path / "noeot"], "--eot-token"),
        (["--text", tmp_path / "d.jsonl", "--tokenizer", tmp_path / "nowhere"], "does not exist"),
        (["--text", tmp_path / "docs.parquet", "--tokenizer", tiny_data, "--eot-token", "<nope>"],
         "no token '<nope>'"),
        (["--tokens", tmp_path / "d.jsonl"], "--tokens needs --tokenizer"),
        (["--hf-dataset", "json", "--data-files", tmp_path / "missing.jsonl"], "cannot load the dataset 'json'"),
    ]
    for args, needle in cases:
        r = superpose("prepare", "--out", tmp_path / "data", *args)
        assert r.returncode == 2 and needle in r.stderr.strip().splitlines()[-1], (args, r.stderr)
        assert r.stderr.count("error") == 1 and "Traceback" not in r.stderr, r.stderr
        assert not (tmp_path / "data").exists() and not list(tmp_path.glob(".data*")), args
    big = np.array([5, 0, 900, 0], dtype=np.uint16)
    big.tofile(tmp_path / "big.bin")
    with pytest.raises(UserError, match="outside the tokenizer's 320 tokens"):
        prepare_tokens(tmp_path / "data", tmp_path / "big.bin", tiny_data / "tokenizer.json", log=quiet)
