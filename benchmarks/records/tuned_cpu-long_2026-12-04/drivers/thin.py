"""Thin a cell's copied metrics.jsonl for the record: every 50th train row, the last one, and
every other row (evaluations, phase switches) as written. The full file stays in runs/ on the
machine that trained it; 12,000 train rows are 4.6 MB a cell, too much to commit 26 times.

    python drivers/thin.py screen/*/metrics.jsonl      (idempotent)
"""
import json
import sys

for path in sys.argv[1:]:
    rows = [json.loads(line) for line in open(path)]
    train = [r for r in rows if r.get("type") == "train"]
    last = train[-1]["step"] if train else None
    kept = [r for r in rows if r.get("type") != "train" or r["step"] % 50 == 0 or r["step"] == last]
    if len(kept) < len(rows):
        with open(path + ".tmp", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in kept)
        import os
        os.replace(path + ".tmp", path)
        print(f"{path}: {len(rows)} -> {len(kept)} rows")
