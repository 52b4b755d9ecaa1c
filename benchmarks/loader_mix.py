"""The mixture loader's cost: data time as a share of the training step on a 2-source data.mix.

Trains a preset (default cpu-small) for --steps steps on a weighted mixture of two prepared data
directories, then the same steps on its first directory alone, each through the real loop
(`build_trainer(...).train()`), and reads each step's `data_time_s` (the loader's `next_rows`)
and `step_time_s` from the run's metrics.jsonl. Per phase it prints the median step and data
times, their ratio, and the share over the phase (sum of data time / sum of step time). The first
step of each phase is left out: it page-faults the shards in and warms the allocator up.

Target (issue 14): with the mixture, data time under 2% of the step in both phases.

    .venv/bin/python benchmarks/loader_mix.py --set train.threads=1          # two synthetic directories
    .venv/bin/python benchmarks/loader_mix.py --mix /tmp/spdata-4096=0.5,DIR_B=0.5 --set train.threads=1

Without --mix it writes two prepared-format directories of random tokens (common.synthetic_data,
of different sizes and seeds, sharing the stub tokenizer) under $SUPERPOSE_CACHE/bench.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
from pathlib import Path

import torch

from common import load_average, print_machine


def phase_shares(metrics: Path) -> dict[int, dict]:
    """Per phase: steps timed, median step and data time (s), their ratio, and sum data / sum step."""
    recs = [r for r in map(json.loads, metrics.read_text().splitlines()) if r["type"] == "train"]
    out = {}
    for phase in sorted({r["phase"] for r in recs}):
        mine = [r for r in recs if r["phase"] == phase]
        mine = mine[1:] if len(mine) > 1 else mine  # the phase's first step is a warm-up
        step, data = [r["step_time_s"] for r in mine], [r["data_time_s"] for r in mine]
        out[phase] = {"steps": len(mine), "bag_size": mine[0]["bag_size"], "step_s": statistics.median(step),
                      "data_s": statistics.median(data), "share": sum(data) / sum(step)}
        out[phase]["median_share"] = out[phase]["data_s"] / out[phase]["step_s"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="cpu-small")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--mix", help="DIR=WEIGHT,DIR=WEIGHT (default: two synthetic directories, 0.5 each)")
    ap.add_argument("--set", nargs="*", default=[], metavar="SECTION.FIELD=VALUE", help="config overrides")
    args = ap.parse_args()

    from superpose.overrides import parse_overrides, set_fields
    from superpose.presets import preset
    from superpose.data import open_mixture
    from superpose.data.mixture import parse_mix
    from superpose.training import build_trainer
    from superpose.training.build import resolve_from_data

    cfg = set_fields(preset(args.preset), parse_overrides([o if o.startswith("--") else "--" + o for o in args.set]))
    cfg.train.steps, cfg.train.eval_every = args.steps, 0  # one evaluation, at the end (not in any step)
    mix = args.mix
    if not mix:
        from common import synthetic_data
        from superpose.data.default_corpus import cache_dir

        vocab = cfg.model.vocab_size or cfg.data.vocab_size
        a = synthetic_data(cache_dir() / "bench" / f"synthetic-v{vocab}", vocab)
        b = synthetic_data(cache_dir() / "bench" / f"synthetic-v{vocab}-b", vocab, train_tokens=1_000_000, seed=1)
        mix = f"{a}=0.5,{b}=0.5"
    cfg.data.path, cfg.data.mix = "", mix
    mixture = open_mixture(mix)
    cfg = resolve_from_data(cfg, mixture).validate()
    single = copy.deepcopy(cfg)
    single.data.mix, single.data.path = "", parse_mix(cfg.data.mix)[0][0]

    if cfg.train.threads:  # before the machine record, which states the threads
        torch.set_num_threads(cfg.train.threads)
    print_machine(f"benchmarks/loader_mix.py --preset {args.preset} --steps {args.steps} "
                  f"--mix {args.mix or '(synthetic)'} {' '.join(args.set)}")
    print(f"mixture: {mixture.spec}; " + ", ".join(f"{s.path.name}: {s.train.num_tokens:,} train tokens"
                                                   for s in mixture.sources))
    print(f"B={cfg.train.batch_size} rows x L={cfg.data.seq_len} positions, s={cfg.tst.bag_size}, r={cfg.tst.ratio}, "
          f"{args.steps} steps; threads={cfg.train.threads or 'torch default'}; {load_average()}")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, c in (("mixture", cfg), ("first source alone", single)):
            build_trainer(c, Path(tmp) / name.replace(" ", "-"), log=lambda m: None).train(progress=False)
            results[name] = phase_shares(Path(tmp) / name.replace(" ", "-") / "metrics.jsonl")
    print("\nper phase, leaving out its first step; medians, and the share over the phase (sum data / sum step)")
    for name, phases in results.items():
        for p, r in phases.items():
            print(f"  {name:<19} phase {p} (s={r['bag_size']}, {r['steps']} steps): step {r['step_s'] * 1e3:.1f} ms, "
                  f"data {r['data_s'] * 1e3:.3f} ms = {100 * r['median_share']:.2f}% of the step "
                  f"({100 * r['share']:.2f}% over the phase)")
    worst = max(r["share"] for r in results["mixture"].values())
    print(f"\nmixture: data time at most {100 * worst:.2f}% of the step over a phase (target < 2%)")
    print(load_average())


if __name__ == "__main__":
    main()
