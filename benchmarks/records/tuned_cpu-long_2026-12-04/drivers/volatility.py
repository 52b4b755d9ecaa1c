"""Exploratory (not pre-registered): how much the validation loss swings up between evaluations,
per corpus and arm, and how many documents one training step reads. On the non-repeating corpus the
12,000-step runs' validation loss jumps by tenths of a nat between evaluations 500 steps apart;
on the default corpus it does not. The loader reads a step's rows as consecutive windows of one
shuffled stream of documents (superpose/data/loader.py), so a step of 16 x 64 tokens covers
about a dozen of the default corpus's documents (84 tokens on average) and a fraction of one of
the non-repeating corpus's (2,498 on average), and consecutive steps read on in the same one.

    .venv/bin/python drivers/volatility.py        (from the checkout whose runs/ holds the confirmations)
"""
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[4]))  # the checkout, for superpose's loader
from superpose.data import open_dataset  # noqa: E402

CORPORA = {"default corpus": ("runs/confirm-default", "~/.cache/superpose/data/default-v4096"),
           "non-repeating corpus": ("runs/confirm-big", "runs/bigcorpus-v4096")}
STEP = 16 * 64  # tokens of one baseline step in cpu-long (a TST phase-1 step reads 4x as many)
FROM = 4000  # past warmup and the steep start; the regular evaluations every 500 steps from here to 12,000


def rises(metrics: Path) -> float:
    """The validation loss's rises summed over consecutive regular evaluations from FROM on: 0 for a
    curve that only falls, whatever its slope; the swings a smooth descent does not have."""
    ev = [(r["step"], r["val_loss"]) for r in map(json.loads, metrics.open()) if "val_loss" in r]
    v = np.array([loss for step, loss in ev if step + 1 >= FROM and (step + 1) % 500 == 0])
    return float(np.clip(np.diff(v), 0, None).sum())


def main() -> None:
    root = Path.cwd()
    print("| corpus | arm | seeds | val loss's rises between evaluations, summed, steps 4,000-12,000 (nats) | "
          "train tokens per document (mean) | share of train tokens in documents longer than a step (1,024) |")
    print("|---|---|---|---|---|---|")
    for corpus, (runs, data) in CORPORA.items():
        data = Path(data).expanduser() if data.startswith("~") else root / data
        train = json.loads((data / "meta.json").read_text())["splits"]["train"]
        long = open_dataset(data).loader(seed=0, vocab_size=4096).long_document_share(STEP)  # what train warns on
        for arm, pattern in (("baseline, 12,000", "baseline-12000"), ("TST", "tst-*")):
            found = sorted(m for m in (root / runs / "parts").glob(f"seed-*/seed-*/{pattern}/metrics.jsonl")
                           if (m.parents[1] / "result.json").exists())  # finished seeds only
            if not found:
                sys.exit(f"volatility.py: no {runs}/parts/seed-*/seed-*/{pattern}/metrics.jsonl under {root}")
            s = [rises(m) for m in found]
            print(f"| {corpus} | {arm} | {len(s)} | {np.mean(s):.3f} (seeds {min(s):.3f} to {max(s):.3f}) | "
                  f"{train['tokens'] / train['documents']:,.0f} | {long:.0%} |")


if __name__ == "__main__":
    main()
