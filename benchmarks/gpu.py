"""GPU throughput of the trainer on the 270M preset shape: tokens/s, step time and MFU, both phases.

The real `Trainer.train_step` runs on synthetic tokens (throughput does not depend on them) with
the preset's model, sequence length and vocabulary, bf16 autocast, fused AdamW and (by default)
torch.compile; phase 2 (next-token) and phase 1 (bags of s) alternate step by step. MFU is model
FLOPs/s (`Transformer.flops_per_position`) over the bf16 matmul peak measured here, and over the
GPU's nominal dense bf16 peak when it is a known part.

`benchmarks/gpu.sh` sets up and runs this with the defaults (a few minutes on one H100/H200, most
of it compiling). On a machine without CUDA it stops with exit status 2. `--device cpu --tiny`
runs a tiny shape on CPU, which is how the test suite checks this script.

    .venv/bin/python benchmarks/gpu.py                                     # what gpu.sh runs
    .venv/bin/python benchmarks/gpu.py --loss-chunk-rows 0,4096 --no-compile
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

import torch

from common import bench_config, bench_trainer, fmt_flops, load_average, matmul_peak, median, phases, print_machine

# Nominal dense bf16 tensor-core peaks (FLOP/s), from the vendors' data sheets (no sparsity).
NOMINAL_BF16 = {"H200": 989e12, "H100 SXM": 989e12, "H100 80GB HBM3": 989e12, "H100 PCIe": 756e12,
                "H100 NVL": 835e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10G": 70e12, "GH200": 989e12,
                "B200": 2250e12}


def nominal_peak(name: str) -> tuple[str, float] | None:
    for key in sorted(NOMINAL_BF16, key=len, reverse=True):
        if key in name:
            return key, NOMINAL_BF16[key]
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="270m")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--bag-size", type=int, default=6)
    ap.add_argument("--micro-batch", type=int, default=16, help="rows per micro-batch (of seq_len positions)")
    ap.add_argument("--grad-accum", type=int, default=4, help="micro-batches per optimizer step")
    ap.add_argument("--steps", type=int, default=8, help="measured steps per phase")
    ap.add_argument("--warmup", type=int, default=2, help="steps per phase before timing (compilation happens here)")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--no-fused", action="store_true", help="foreach AdamW instead of fused")
    ap.add_argument("--attention", default="auto", help="train.attention: auto, math, flash, efficient, cudnn")
    ap.add_argument("--loss-chunk-rows", default="-1",
                    help="comma-separated train.loss_chunk_rows values, one trainer each (-1 auto, 0 unfused)")
    ap.add_argument("--set", nargs="*", default=[], metavar="SECTION.FIELD=VALUE", help="more config overrides")
    ap.add_argument("--tiny", action="store_true", help="a tiny model and batch (to test this script on CPU)")
    args = ap.parse_args()

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("benchmarks/gpu.py: no CUDA GPU is visible to torch "
              f"({torch.__version__}, built with CUDA {torch.version.cuda}); run it on a GPU machine, "
              "or pass --device cpu --tiny to check the script", file=sys.stderr)
        return 2
    over = [f"train.device={args.device}", "train.dtype=bfloat16", f"tst.bag_size={args.bag_size}",
            f"train.batch_size={args.micro_batch * args.grad_accum}", f"train.grad_accum={args.grad_accum}",
            f"train.compile={not args.no_compile}", f"optim.fused={not args.no_fused}",
            f"train.attention={args.attention}"]
    if args.tiny:
        over += ["model.dim=64", "model.n_layers=2", "model.n_heads=4", "model.n_kv_heads=2", "model.ffn_dim=128",
                 "data.seq_len=32", "data.val_tokens=256", "model.max_seq_len=32"]
    chunk_values = [int(x) for x in args.loss_chunk_rows.split(",")]
    vocab = 512 if args.tiny else None
    cfgs = [bench_config(args.preset, over + [f"train.loss_chunk_rows={c}", *args.set], None, vocab_size=vocab)
            for c in chunk_values]
    cfg = cfgs[0]
    print_machine(f"benchmarks/gpu.py {' '.join(sys.argv[1:])}", device)
    B, L, s = cfg.train.batch_size, cfg.data.seq_len, args.bag_size
    print(f"preset {args.preset}: {cfg.model.dim}d x {cfg.model.n_layers} layers, {cfg.model.n_heads} heads "
          f"({cfg.model.n_kv_heads} kv), V={cfg.model.vocab_size}; step = {args.grad_accum} x {args.micro_batch} rows "
          f"x L={L}; bf16 autocast; compile={cfg.train.compile}; fused AdamW={cfg.optim.fused}; "
          f"attention={cfg.train.attention}; {load_average()}", flush=True)
    peak = matmul_peak(device, torch.bfloat16, n=256 if args.tiny else 0, seconds=1 if args.tiny else 5)
    nominal = nominal_peak(torch.cuda.get_device_name()) if device.type == "cuda" else None
    print(f"measured bf16 matmul peak: {fmt_flops(peak)}/s" +
          (f"; nominal {nominal[0]} dense bf16: {fmt_flops(nominal[1])}/s" if nominal else ""), flush=True)

    p1, p2 = phases(s)
    for c, cfg in zip(chunk_values, cfgs):
        with tempfile.TemporaryDirectory() as tmp:
            trainer = bench_trainer(cfg, tmp)
        fpp = trainer.model.flops_per_position(L)
        print(f"\ntrain.loss_chunk_rows={c} (in effect: {trainer.loss_chunk_rows}); {trainer.model.num_params():,} "
              f"parameters; {fmt_flops(fpp)} per position = per raw token in phase 2, {fmt_flops(fpp / s)} per raw "
              f"token in phase 1", flush=True)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        times = {"phase 2": [], "phase 1": []}
        for i in range(args.warmup + args.steps):
            for name, p in (("phase 2", p2), ("phase 1", p1)):
                t0 = time.perf_counter()
                trainer.train_step(p)  # ends with .item(): the GPU has finished the step
                dt = time.perf_counter() - t0
                if i < args.warmup:
                    print(f"  warm-up {name} step {i + 1}: {dt:.1f} s", flush=True)
                else:
                    times[name].append(dt)
        for name, tpp in (("phase 2", 1), ("phase 1", s)):
            t = median(times[name])
            pos = B * L / t
            mfu = f"MFU {100 * pos * fpp / peak:.1f}% of measured"
            if nominal:
                mfu += f", {100 * pos * fpp / nominal[1]:.1f}% of nominal"
            print(f"  {name}: step {t * 1e3:.1f} ms (min {min(times[name]) * 1e3:.1f}), {pos * tpp:,.0f} raw tokens/s "
                  f"({pos:,.0f} positions/s), {fmt_flops(pos * fpp)}/s, {mfu}")
        if device.type == "cuda":
            print(f"  peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
        del trainer
    print(load_average())
    return 0


if __name__ == "__main__":
    sys.exit(main())
