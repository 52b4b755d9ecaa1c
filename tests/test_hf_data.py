"""TSTTrainer's data in the forms a Hugging Face user has it, offline on CPU with tiny Llamas.

- A `datasets.Dataset` trains 20 steps through the switch, and a run resumed from a checkpoint
  before the switch ends with the same weights as the uninterrupted one.
- A list of id lists, a Dataset of ids and a Dataset of text + tokenizer give the same rows (BOS
  templates kept); `open_dataset(path)` and `open_dataset(path).train` give the native loader's rows.
- Rows are shuffled by the seed, each epoch reads every document once, phase 2 reads on where
  phase 1 stopped; the epoch is the text consumed over the text available.
- Every wrong input is one line, a ValueError and a TypeError; without `datasets` installed the
  list and array forms still work.

Run: .venv/bin/pytest tests/test_hf_data.py
"""

import itertools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach a hub
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

transformers = pytest.importorskip("transformers")

from superpose.core.tst_spec import TSTSpec  # noqa: E402
from superpose.data import TrainLoader, open_dataset, val_windows  # noqa: E402
from superpose.errors import UserError  # noqa: E402
from superpose.interop.hf_data import DataError, ShuffledRows, token_source  # noqa: E402
from superpose.interop.hf_trainer import TSTTrainer  # noqa: E402

from conftest import make_documents  # noqa: E402
from test_hf import batch_shapes  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

V, S, L = 97, 3, 8
EOT = "<|endoftext|>"


def tiny_llama(vocab=V, seed=0):
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64))


def train_args(out, **kw):
    base = dict(output_dir=str(out), max_steps=20, per_device_train_batch_size=2, learning_rate=1e-2,
                lr_scheduler_type="linear", warmup_steps=2, weight_decay=0.0, logging_steps=1, report_to=[],
                use_cpu=True, seed=0, disable_tqdm=True, save_strategy="no")
    return transformers.TrainingArguments(**{**base, **kw})


def random_docs(n=40, seed=0, vocab=V):
    """Documents of 3..30 ids in [3, vocab) (2 is the Llama config's eos)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(3, vocab, rng.integers(3, 30)).tolist() for _ in range(n)]


def rows_of(trainer, n, which="train"):
    data = trainer.train_dataset if which == "train" else trainer.eval_dataset
    return [r["input_ids"].tolist() for r in itertools.islice(data, n)]


@pytest.fixture(scope="module")
def tokenizer(tiny_data):
    return transformers.PreTrainedTokenizerFast(tokenizer_file=str(tiny_data / "tokenizer.json"), eos_token=EOT)


# ----------------------------------------------------------------------------- train and resume

def test_dataset_trains_through_the_switch_and_resumes(tmp_path):
    """20 steps, switch at 10, on a Dataset of ~500 tokens (the run reads 10 * 2 * 3 * 8 + 10 * 2 * 8
    = 640, so it wraps into a second epoch). Resumed from checkpoint-5, before the switch, the
    run skips to the same rows and ends with the same weights and losses."""
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"input_ids": random_docs(30)})
    first = TSTTrainer(model=tiny_llama(), args=train_args(tmp_path / "a", save_strategy="steps", save_steps=5),
                       train_dataset=ds, seq_len=L, tst=TSTSpec(bag_size=S, ratio=0.5))
    shapes = batch_shapes(first)
    first.train()
    assert shapes == [(2, S * L + 1)] * 10 + [(2, L + 1)] * 10
    logs = [h for h in first.state.log_history if "loss" in h]
    assert [h["bag_size"] for h in logs] == [S] * 10 + [1] * 10
    # The logged epoch is the text read: 2 rows of S*L tokens per phase-1 step, of L after.
    T = first.train_dataset.num_tokens
    assert logs[0]["epoch"] == pytest.approx(2 * S * L / T)
    assert [h["epoch"] for h in logs] == [first.epoch_at(k) for k in range(1, 21)]
    assert 1 < logs[-1]["epoch"] < 2

    resumed = TSTTrainer(model=tiny_llama(seed=1), args=train_args(tmp_path / "b"), train_dataset=ds, seq_len=L,
                         tst=TSTSpec(bag_size=S, ratio=0.5))
    resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-5"))
    assert resumed.state.global_step == 20
    for (name, a), b in zip(first.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name
    again = [h for h in resumed.state.log_history if "loss" in h]  # steps 1-5 come from the checkpoint
    assert [h["step"] for h in again] == list(range(1, 21))
    assert [h["loss"] for h in again] == pytest.approx([h["loss"] for h in logs], abs=1e-6)
    assert [h["epoch"] for h in again] == [h["epoch"] for h in logs]


# ----------------------------------------------------------------------------- the forms agree

def test_documents_ids_dataset_and_text_give_the_same_rows(tiny_data, tokenizer, tmp_path):
    """The same texts as a list of id lists, a Dataset of ids and a Dataset of text tokenized by
    the trainer give the same phase-1 and phase-2 rows; a tokenizer that puts BOS before a text
    gets BOS + text + eos per document, as it encodes them."""
    datasets = pytest.importorskip("datasets")
    texts = make_documents(30, seed=5)
    ids = [tokenizer(t)["input_ids"] for t in texts]
    eos = tokenizer.eos_token_id

    def trainer(data, **kw):  # the tokenizer's eos joins the documents (the Llama config's is 2)
        return TSTTrainer(model=tiny_llama(320), args=train_args(tmp_path, max_steps=10), train_dataset=data,
                          processing_class=tokenizer, seq_len=L, tst=TSTSpec(bag_size=S, ratio=0.5), **kw)

    want = rows_of(trainer(ids), 30)
    assert rows_of(trainer(datasets.Dataset.from_dict({"input_ids": ids})), 30) == want
    assert rows_of(trainer(datasets.Dataset.from_dict({"text": texts})), 30) == want
    assert rows_of(trainer(texts), 30) == want
    assert rows_of(trainer(datasets.Dataset.from_dict({"body": texts}), dataset_column="body"), 30) == want
    assert [len(r) for r in want] == [S * L + 1] * 10 + [L + 1] * 20  # 10 phase-1 rows (5 steps of 2), then L + 1

    # A Llama-style template: BOS before every text. Packed: BOS, text, eos, BOS, text, eos, ...
    from tokenizers import AddedToken, Tokenizer, processors

    tok = Tokenizer.from_file(str(tiny_data / "tokenizer.json"))
    tok.add_special_tokens([AddedToken("<s>", special=True)])
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    bos_tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token=EOT)
    stream, starts = token_source(datasets.Dataset.from_dict({"text": texts}), what="train_dataset",
                                  tokenizer=bos_tok, eos=eos, vocab_size=330)
    packed = stream.read(0, stream.num_tokens).tolist()
    assert packed == [t for doc in ids for t in [bos, *doc, eos]]
    assert starts.tolist() == np.cumsum([0] + [len(d) + 2 for d in ids[:-1]]).tolist()


def test_open_dataset_gives_the_native_loaders_rows(tiny_data, tokenizer, tmp_path):
    """`open_dataset(path)` (the README's data directory) trains on the rows superpose's own
    TrainLoader reads with the same seed, phase-1 lengths then phase-2; its `.train` stream,
    cut after each end-of-text, gives the same; `eval_dataset=open_dataset(path)` evaluates on
    the native evaluation windows of its held-out split."""
    data = open_dataset(tiny_data)
    args = train_args(tmp_path, max_steps=10, seed=7)
    kw = dict(seq_len=L, tst=TSTSpec(bag_size=S, ratio=0.5))
    trainer = TSTTrainer(model=tiny_llama(320), args=args, train_dataset=data, eval_dataset=data, **kw)
    native = TrainLoader(data.train, data.train_docs, seed=7, vocab_size=320)
    want = [native.next_rows(1, S * L if i < 10 else L)[0].tolist() for i in range(30)]
    assert rows_of(trainer, 30) == want
    from_stream = TSTTrainer(model=tiny_llama(320), args=args, train_dataset=data.train, processing_class=tokenizer,
                             **kw)
    assert rows_of(from_stream, 30) == want
    windows = val_windows(data, L, data.val.num_tokens)
    assert torch.equal(torch.stack([r["input_ids"] for r in trainer.eval_dataset]), torch.from_numpy(windows))


# ----------------------------------------------------------------------------- order and epochs

def unique_docs(n=60, seed=0):
    """Documents whose ids never repeat (1, 2, 3, ...), eos = 0: a token read twice shows."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, 40, n)
    ids = np.arange(1, lengths.sum() + 1)
    return [chunk.tolist() for chunk in np.split(ids, np.cumsum(lengths)[:-1])]


def shuffled(docs, seed, stages=None):
    stream, starts = token_source(docs, what="train_dataset", eos=0, vocab_size=10_000)
    return ShuffledRows(stream, L, seed=seed, doc_starts=starts, stages=stages)


def inputs(rows):
    return [t for r in rows for t in r[:-1]]


def test_shuffle_is_seeded_and_an_epoch_reads_every_document_once():
    docs = unique_docs()
    rows = shuffled(docs, seed=0)
    T = rows.num_tokens
    per_epoch = (T - 1) // L
    first = [r["input_ids"].tolist() for r in itertools.islice(rows, 2 * per_epoch)]
    assert [r["input_ids"].tolist() for r in itertools.islice(shuffled(docs, seed=0), 2 * per_epoch)] == first
    assert [r["input_ids"].tolist() for r in itertools.islice(shuffled(docs, seed=1), per_epoch)] != first[:per_epoch]

    for epoch in (first[:per_epoch], first[per_epoch:]):
        read = inputs(epoch)  # one epoch's inputs: whole documents, each followed by eos, in some order
        words = [t for t in read if t]
        assert len(words) == len(set(words))  # no token read twice as an input
        assert T - len(read) <= L  # only the tail too short for a row is left unread
        pieces = " ".join(map(str, read)).split(" 0")[:-1]  # complete documents, split at eos
        as_docs = {tuple(int(t) for t in p.split()) for p in pieces}
        assert len(as_docs) == len(pieces) and as_docs <= {tuple(d) for d in docs}
        assert len(pieces) >= len(docs) - 2  # the last document may be cut by the end of the epoch
    assert inputs(first[:per_epoch]) != inputs(first[per_epoch:])  # each epoch its own permutation

    # Across the switch: 4 phase-1 rows of S*L inputs, then rows of L, read the same text as
    # rows of L alone would, in the same order, nothing skipped and nothing read twice.
    staged = [r["input_ids"].tolist() for r in itertools.islice(shuffled(docs, 0, stages=[(4, S)]), 4 + 20)]
    assert [len(r) for r in staged] == [S * L + 1] * 4 + [L + 1] * 20
    assert inputs(staged) == inputs(first[:4 * S + 20])


def test_epoch_is_text_consumed_over_text_available():
    """TokenRows.epoch_at (closed form, stage by stage) equals the native loader's epoch_progress
    after reading the same rows one by one, through several epochs and a bag-size curriculum."""
    docs = unique_docs(n=6, seed=3)
    stages = [(5, 4), (7, 2)]
    rows = shuffled(docs, seed=0, stages=stages)
    T = rows.num_tokens
    loader = TrainLoader(rows.stream, rows.doc_starts, seed=0, vocab_size=10_000)
    for k in range(60):
        assert rows.epoch_at(k) == pytest.approx(loader.epoch_progress, abs=1e-12), k
        loader.next_rows(1, rows.row_tokens(k))
    assert loader.epoch >= 3
    assert rows.epoch_at(1) == 4 * L / T


# ----------------------------------------------------------------------------- errors

def refused(make, needle):
    with pytest.raises(DataError) as e:
        make()
    msg = str(e.value)
    assert needle in msg and "\n" not in msg, msg
    assert isinstance(e.value, ValueError) and isinstance(e.value, TypeError) and isinstance(e.value, UserError)


def test_wrong_data_is_one_line(tmp_path):
    model, args = tiny_llama(), train_args(tmp_path, max_steps=4)

    def make(**kw):
        return lambda: TSTTrainer(model=model, args=args, **{"seq_len": L, "tst": TSTSpec(bag_size=S, ratio=0.5), **kw})

    docs = random_docs(20)
    cases = [
        (make(), "needs training data: pass train_dataset="),
        (make(train_dataset=docs, train_tokens=np.arange(500) % V), "both train_tokens= and train_dataset= given"),
        (make(train_dataset=docs, eval_dataset=docs, eval_tokens=np.arange(50)), "both eval_tokens= and eval_dataset="),
        (make(train_dataset=[]), "train_dataset is empty"),
        (make(train_dataset=[[], []]), "train_dataset is empty"),
        (make(train_dataset=[[1.5, 2.0], [3.0]]), "holds float64 values, not integer token ids"),
        (make(train_dataset=np.arange(500) / 2), "holds float64 values, not integer token ids"),
        (make(train_dataset=[[5, 6], [7, V]]), f"holds token id {V}, outside the model's vocabulary of {V}"),
        (make(train_dataset=torch.tensor([4, -1, 5])), "holds token id -1"),
        (make(train_dataset=[[5, 6, 7]] * 3), "has 12 tokens, fewer than one row of 25"),
        (make(train_dataset=docs, eval_dataset=[[5, 6]]), "eval_dataset has 3 tokens, fewer than one row of 9"),
        (make(train_dataset=["some text", "more"]), "holds text and no tokenizer was given"),
        (make(train_dataset=[1, [2, 3]]), "is not one flat sequence of token ids"),
        (make(train_dataset={"train": docs}), "is a dict of splits (train); pass one split"),
        (make(train_dataset="corpus.txt"), "is a builtins.str; TSTTrainer takes a datasets.Dataset"),
        (make(train_dataset=docs, tokenizer=object(), processing_class=object()), "both tokenizer= and processing_"),
    ]
    for build, needle in cases:
        refused(build, needle)
    model.config.eos_token_id = None  # nothing says which token ends a document
    refused(make(train_dataset=docs), "joined with an end-of-text token, and none is known")


def test_wrong_dataset_is_one_line(tmp_path):
    datasets = pytest.importorskip("datasets")
    model, args = tiny_llama(), train_args(tmp_path, max_steps=4)

    def make(ds, **kw):
        return lambda: TSTTrainer(model=model, args=args, train_dataset=ds, seq_len=L, tst=TSTSpec(bag_size=S, ratio=0.5),
                                  **kw)

    ids = random_docs(20)
    cases = [
        (make(datasets.Dataset.from_dict({"tokens": ids, "label": [0] * 20})),
         "has no 'input_ids' or 'text' column (it has: tokens, label); name its token-id or text column with "
         "dataset_column="),
        (make(datasets.Dataset.from_dict({"input_ids": ids}), dataset_column="ids"), "has no 'ids' column"),
        (make(datasets.Dataset.from_dict({"text": ["a b", "c"]})), "column 'text' holds text and no tokenizer"),
        (make(datasets.Dataset.from_dict({"input_ids": []})), "train_dataset is empty (0 rows)"),
        (make(datasets.Dataset.from_dict({"input_ids": list(range(40))})), "holds int32, not a list of integer"),
        (make(datasets.Dataset.from_dict({"input_ids": [[0.5, 1.5]] * 20})), "holds list<item: double>"),
        (make(datasets.Dataset.from_dict({"input_ids": ids + [[V + 3]]})), f"holds token id {V + 3}, outside"),
        (make(datasets.DatasetDict({"train": datasets.Dataset.from_dict({"input_ids": ids})})),
         "is a dict of splits (train); pass one split, e.g. train_dataset=ds['train']"),
    ]
    for build, needle in cases:
        refused(build, needle)


def test_list_and_array_forms_work_without_datasets(tmp_path):
    """`datasets` is an optional extra: with it unimportable, superpose.interop.hf_trainer imports and trains on
    documents and arrays (the library never imports it at the top)."""
    code = """
import sys
sys.modules["datasets"] = None  # import datasets -> ImportError, as when it is not installed
import numpy as np, torch, transformers
torch.set_num_threads(1)
from superpose.core.tst_spec import TSTSpec
from superpose.interop.hf_trainer import TSTTrainer
cfg = transformers.LlamaConfig(vocab_size=97, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                               num_attention_heads=2, max_position_embeddings=32)
args = transformers.TrainingArguments(output_dir=sys.argv[1], max_steps=2, report_to=[], use_cpu=True,
                                      save_strategy="no", disable_tqdm=True, per_device_train_batch_size=2)
for data in ([list(range(3, 60))] * 3, np.arange(3, 200) % 97, torch.arange(3, 200) % 97):
    t = TSTTrainer(model=transformers.LlamaForCausalLM(cfg), args=args, train_dataset=data, seq_len=8,
                   tst=TSTSpec(bag_size=2, ratio=0.5))
    t.train()
    assert t.state.global_step == 2
print("ok")
"""
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]
