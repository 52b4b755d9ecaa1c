"""`superpose prepare` at the tokenizer's own speed, in memory that does not grow with the corpus.

    throughput  prepare with an existing tokenizer against the tokenizer library's own
                `encode_batch` on the same text, in the same run, in turns (A, B, B, A): the
                ratio prepare MB/s / encode_batch MB/s (goal >= 0.8 on all cores)
    memory      peak RSS of `superpose prepare` (a fresh process per size) on corpora of
                --sizes MB of .jsonl (goal: flat, under 1.5 GiB)

The text is the default corpus's documents, repeated (shuffled copies) up to each size, so it
reads like real text to the tokenizer. Files go under --work (default $SUPERPOSE_CACHE/bench/prepare).

    .venv/bin/python benchmarks/prepare_speed.py --sizes 50,500,5000 --out benchmarks/records/prepare_speed_DATE.md
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import ROOT, machine

from superpose.data import corpus, default_corpus
from superpose.data.default_corpus import cache_dir, default_data_dir, ensure_default_corpus
from superpose.data.prepare import prepare
from superpose.data.tokenizer import load_tokenizer_file


def corpus_file(path: Path, mbytes: int, docs: list[str]) -> Path:
    """A .jsonl of `mbytes` MB: shuffled copies of `docs`, written once and reused."""
    if path.is_file() and path.stat().st_size >= mbytes * 1e6:
        return path
    rng, written = random.Random(0), 0
    with open(path.with_suffix(".tmp"), "w") as f:
        while written < mbytes * 1e6:
            order = list(range(len(docs)))
            rng.shuffle(order)
            for i in order:
                line = json.dumps({"text": docs[i]}) + "\n"
                f.write(line)
                written += len(line)
                if written >= mbytes * 1e6:
                    break
    path.with_suffix(".tmp").replace(path)
    return path


def encode_batch_time(tok, path: Path) -> tuple[float, int]:
    """The ceiling: the documents already in memory, `encode_batch` in batches of 2000."""
    docs = [json.loads(line)["text"] for line in open(path)]
    n_bytes = sum(len(d.encode()) for d in docs)
    t0 = time.perf_counter()
    for i in range(0, len(docs), 2000):
        tok.encode_batch(docs[i:i + 2000], add_special_tokens=False)
    return time.perf_counter() - t0, n_bytes


def prepare_time(path: Path, tokenizer: Path, work: Path) -> float:
    out = work / "out"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    prepare(out, corpus.text_sources([path]), tokenizer=tokenizer, log=lambda m: None)
    return time.perf_counter() - t0


def peak_rss(path: Path, tokenizer: Path, work: Path) -> tuple[float, float]:
    """(peak RSS in MiB, seconds) of `superpose prepare` in a fresh process."""
    out = work / "rss-out"
    shutil.rmtree(out, ignore_errors=True)
    code = ("import resource, sys, time; from pathlib import Path; from superpose.cli import main; t=time.time(); "
            f"rc = main(['prepare', '--out', {str(out)!r}, '--text', {str(path)!r}, '--tokenizer', {str(tokenizer)!r}]); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.time() - t); sys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        raise SystemExit(done.stderr)
    kb, secs = done.stdout.split()[-2:]
    shutil.rmtree(out, ignore_errors=True)
    return int(kb) / 1024, float(secs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="50,500", help="corpus sizes in MB for the memory measurement")
    ap.add_argument("--speed-mb", type=int, default=50, help="corpus size in MB for the throughput ratio")
    ap.add_argument("--rounds", type=int, default=2, help="A, B, B, A rounds of the throughput ratio")
    ap.add_argument("--work", type=Path, default=cache_dir() / "bench" / "prepare")
    ap.add_argument("--out", type=Path, help="write the record (markdown) here")
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    data = ensure_default_corpus(4096)
    tokenizer = default_data_dir(4096) / "tokenizer.json"
    docs = [d for s in default_corpus.default_sources(cache_dir() / "downloads") for d in s.iter_documents()]
    start = machine()
    lines = [f"# prepare speed and memory ({time.strftime('%Y-%m-%d')})", "",
             f"Command: `{' '.join(['.venv/bin/python', *sys.argv])}`", "",
             f"Machine: {json.dumps(start)}", ""]
    # Throughput: in turns, so a slow spell of the shared machine hits both alike.
    path = corpus_file(a.work / f"text-{a.speed_mb}mb.jsonl", a.speed_mb, docs)
    tok = load_tokenizer_file(tokenizer)
    enc, prep = [], []
    for r in range(a.rounds):
        for arm in (("enc", "prep") if r % 2 == 0 else ("prep", "enc")):
            if arm == "enc":
                secs, n_bytes = encode_batch_time(tok, path)
                enc.append(n_bytes / secs / 1e6)
            else:
                prep.append(n_bytes_of(path) / prepare_time(path, tokenizer, a.work) / 1e6)
    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    ratio = med(prep) / med(enc)
    lines += ["## Throughput (existing tokenizer)", "",
              "| corpus | encode_batch MB/s (ceiling) | prepare MB/s | ratio (goal >= 0.8) |", "|---|---|---|---|",
              f"| {a.speed_mb} MB .jsonl | {med(enc):.2f} ({', '.join(f'{x:.2f}' for x in enc)}) | "
              f"{med(prep):.2f} ({', '.join(f'{x:.2f}' for x in prep)}) | {ratio:.2f} |", ""]
    print("\n".join(lines[-5:]), flush=True)
    rows = ["## Peak memory of `superpose prepare` (fresh process per size)", "",
            "| corpus | peak RSS | wall | MB/s |", "|---|---|---|---|"]
    for mb in [int(x) for x in a.sizes.split(",")]:
        path = corpus_file(a.work / f"text-{mb}mb.jsonl", mb, docs)
        rss, secs = peak_rss(path, tokenizer, a.work)
        rows.append(f"| {mb} MB .jsonl | {rss:.0f} MiB | {secs:.0f} s | {path.stat().st_size / secs / 1e6:.1f} |")
        print(rows[-1], flush=True)
    lines += rows + ["", f"Load average at the end: {machine()['load_average']}", ""]
    if a.out:
        a.out.write_text("\n".join(lines))
    print("\n".join(lines))
    del data


def n_bytes_of(path: Path) -> int:
    return sum(len(json.loads(line)["text"].encode()) for line in open(path))


if __name__ == "__main__":
    main()
