"""Phase-1 overhead: a TST step (bags of s, same L positions) against an ordinary step.

Both phases run the real `Trainer.train_step` of one trainer, interleaved step by step (phase 1,
phase 2, phase 2, phase 1, ...), so they share the machine's state and load. Per phase it prints
the median step time, the loader's share of it (`data_time_s`: reading s*L + 1 tokens per row),
positions and raw tokens per second, and the model FLOPs per position and per raw token (a phase-1
position carries s raw tokens, so its FLOPs per token are 1/s of phase 2's).

Targets (issue 7), cpu-small preset with s = 6: phase-1 step time within 3% of phase 2; data time
under 2% of the step in both phases.

    .venv/bin/python benchmarks/phases.py                               # cpu-small, s = 6
    .venv/bin/python benchmarks/phases.py --data DATA_DIR --set train.threads=1
"""

from __future__ import annotations

import argparse
import tempfile

import torch

from common import bench_config, bench_trainer, fmt_flops, interleaved, load_average, median, phases, print_machine


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="cpu-small")
    ap.add_argument("--bag-size", type=int, default=6)
    ap.add_argument("--data", help="a prepared data directory (default: synthetic tokens)")
    ap.add_argument("--set", nargs="*", default=[], metavar="SECTION.FIELD=VALUE", help="config overrides")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    args = ap.parse_args()

    cfg = bench_config(args.preset, [f"tst.bag_size={args.bag_size}", *args.set], args.data)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = bench_trainer(cfg, tmp)
    print_machine(f"benchmarks/phases.py --preset {args.preset} --bag-size {args.bag_size} {' '.join(args.set)}")
    B, L, s = cfg.train.batch_size, cfg.data.seq_len, args.bag_size
    print(f"data: {cfg.data.path}; B={B} rows x L={L} positions; threads={torch.get_num_threads()}; "
          f"train.loss_chunk_rows={cfg.train.loss_chunk_rows} (in effect {trainer.loss_chunk_rows}); {load_average()}")
    p1, p2 = phases(s)
    data_time: dict[str, list[float]] = {"phase 1": [], "phase 2": []}

    def step(name, phase):
        def run():
            data_time[name].append(trainer.train_step(phase)["data_time_s"])
        return run

    times = interleaved({"phase 1": step("phase 1", p1), "phase 2": step("phase 2", p2)}, args.repeats, args.warmup)
    fpp = trainer.model.flops_per_position(L)
    print(f"\n{args.repeats} steps per phase after {args.warmup} warm-up, interleaved; medians")
    for name, tokens_per_position in (("phase 1", s), ("phase 2", 1)):
        t = median(times[name])
        dt = median(data_time[name][args.warmup:])
        print(f"  {name}: step {t * 1e3:.1f} ms (min {min(times[name]) * 1e3:.1f}, max {max(times[name]) * 1e3:.1f}), "
              f"data {dt * 1e3:.2f} ms = {100 * dt / t:.2f}% of the step; {B * L / t:,.0f} positions/s, "
              f"{B * L * tokens_per_position / t:,.0f} raw tokens/s; {fmt_flops(fpp)} per position = "
              f"{fmt_flops(fpp / tokens_per_position)} per raw token")
    ratio = median(times["phase 1"]) / median(times["phase 2"])
    pairs = sorted(a / b for a, b in zip(times["phase 1"], times["phase 2"]))
    print(f"\nphase 1 / phase 2 step time: {ratio:.3f} (median of per-round ratios {median(pairs):.3f}; "
          f"target <= 1.03)")
    share = {n: 100 * median(data_time[n][args.warmup:]) / median(times[n]) for n in times}
    print(f"data time / step: phase 1 {share['phase 1']:.2f}%, phase 2 {share['phase 2']:.2f}% (target < 2%)")
    print(load_average())


if __name__ == "__main__":
    main()
