"""superpose_cloze: which of four sentences continues a passage? (HellaSwag-style multiple choice),
built from the held-out text of a superpose data directory, so lm-eval runs it with no hub.

`build_task(name, data_dir, out_dir)` writes `<name>.jsonl` and `<name>.yaml` (the shipped yaml
next to this file, pointed at the jsonl) into out_dir; lm-eval then runs the yaml offline. The
text comes from the validation split, which training never reads, so the task is held out for
every model trained on that data directory.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from ..errors import UserError

HERE = Path(__file__).parent
MAX_VAL_TOKENS = 1 << 21  # read at most this much of the validation split
CONTEXT_WORDS = 48  # a passage keeps at most its last this many words
ENDING_WORDS = (4, 30)  # an ending (or distractor) sentence has this many words


def split_sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", " ".join(text.split())) if s]


def held_out_documents(data_dir: Path) -> list[str]:
    """The validation documents of a data directory, decoded (up to MAX_VAL_TOKENS tokens)."""
    import numpy as np
    from tokenizers import Tokenizer

    from ..data import open_dataset

    ds = open_dataset(data_dir)
    tok = Tokenizer.from_file(str(ds.tokenizer_path))
    ids = ds.val.read(0, min(ds.val.num_tokens, MAX_VAL_TOKENS))
    cuts = np.flatnonzero(ids == ds.eot_id)
    starts = np.concatenate([[0], cuts + 1])
    return [tok.decode(ids[a:b].tolist()) for a, b in zip(starts, np.append(cuts, len(ids))) if b > a]


def cloze_items(documents: list[str], n_items: int, seed: int = 0) -> list[dict]:
    """Up to n_items rows {"context", "choices" (4), "label"}: a passage of a document, its true next
    sentence, and three sentences of similar length from other documents."""
    rng = random.Random(seed)
    docs = [split_sentences(d) for d in documents]
    lo, hi = ENDING_WORDS
    pool = [(i, s) for i, sents in enumerate(docs) for s in sents if lo <= len(s.split()) <= hi]
    order = list(range(len(docs)))
    rng.shuffle(order)
    items = []
    for i in order:
        sents = docs[i]
        boundaries = [k for k in range(1, len(sents)) if lo <= len(sents[k].split()) <= hi]
        if not boundaries:
            continue
        k = rng.choice(boundaries)
        context, ending = " ".join(" ".join(sents[:k]).split()[-CONTEXT_WORDS:]), sents[k]
        n = len(ending.split())
        similar = [s for j, s in pool if j != i and s != ending and abs(len(s.split()) - n) <= max(2, n // 3)]
        if len(set(similar)) < 3:
            continue
        choices = rng.sample(sorted(set(similar)), 3) + [ending]
        rng.shuffle(choices)
        items.append({"context": context, "choices": choices, "label": choices.index(ending)})
        if len(items) == n_items:
            break
    return items


def build_cloze(data_dir: Path | str, out_dir: Path | str, n_items: int = 200, seed: int = 0) -> Path:
    """superpose_cloze.jsonl + superpose_cloze.yaml in out_dir, from data_dir's validation split
    (paths as str or Path)."""
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    items = cloze_items(held_out_documents(Path(data_dir)), n_items, seed)
    if len(items) < 10:
        raise UserError(f"the validation split of {data_dir} gives only {len(items)} cloze items (documents of two "
                        "or more sentences are needed); prepare with a larger --val-fraction or more text")
    out_dir.mkdir(parents=True, exist_ok=True)
    jsonl = out_dir / "superpose_cloze.jsonl"
    jsonl.write_text("".join(json.dumps(item) + "\n" for item in items))
    template = (HERE / "superpose_cloze.yaml").read_text()
    yaml = out_dir / "superpose_cloze.yaml"
    yaml.write_text(template.replace("test: superpose_cloze.jsonl", f"test: {json.dumps(str(jsonl.resolve()))}"))
    return yaml


LOCAL_TASKS = {"superpose_cloze": build_cloze}


def jsonl_dataset(data_files: dict | str, **_unused):
    """lm-eval `custom_dataset` loader for local JSONL files, one document per line:

        custom_dataset: !function superpose.tasks.jsonl_dataset
        dataset_kwargs:
          data_files: {test: /path/to/test.jsonl}

    Returns a `datasets.DatasetDict` built in memory: nothing is fetched or cached.
    """
    import datasets

    files = data_files if isinstance(data_files, dict) else {"test": data_files}
    splits = {}
    for split, path in files.items():
        try:
            lines = Path(path).read_text().splitlines()
        except OSError as e:
            raise UserError(f"task data file {path} cannot be read ({e.strerror}); fix data_files in the task "
                            "yaml") from None
        try:
            splits[split] = datasets.Dataset.from_list([json.loads(line) for line in lines if line.strip()])
        except json.JSONDecodeError as e:
            raise UserError(f"task data file {path} is not JSONL ({e}); write one JSON object per line") from None
    return datasets.DatasetDict(splits)


def build_task(name: str, data_dir: Path, out_dir: Path) -> Path:
    """Build the local task `name` from data_dir into out_dir; returns its yaml."""
    return LOCAL_TASKS[name](data_dir, out_dir)
