"""The multi-hot loss against the paper's reference, and the fused chunked LM head + loss.

Part A (`--part logits`): the loss on given float32 logits, forward + backward.
  reference  the paper's Listing 3: s calls of F.cross_entropy on the same fp32 logits, averaged
  superpose  superposition.multi_hot_cross_entropy (one log-sum-exp, gradient made in one buffer)
  Target (issue 7): superpose >= 3x faster and <= half the peak memory at B*L = 8192,
  V = 32768, s = 6, equal to 1e-5.

Part B (`--part head`): LM head + loss from final hidden states, forward + backward, for the
ordinary next-token loss (s = 1) and the multi-hot loss (s = 6):
  dense      logits = hidden @ W.T for all positions, then the loss (train.loss_chunk_rows=0)
  chunk-N    superposition.chunked_multi_hot_cross_entropy, N positions at a time: the (B*L, V)
             logits never exist, so memory does not grow with B*L x V

Times are medians of interleaved repeats in one process; peak memory is measured per variant in a
fresh subprocess, as the growth of the resident-set high-water mark (ru_maxrss) over the inputs,
so it counts every allocation torch makes (tracemalloc does not see them).

    .venv/bin/python benchmarks/loss.py                      # both parts at the issue's shape
    .venv/bin/python benchmarks/loss.py --part head --rows 2048 --vocab 4096 --dim 128
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

import torch
import torch.nn.functional as F

from common import interleaved, load_average, median, print_machine, spread

from superpose.training.perf import keep_freed_memory
from superpose.core.superposition import (
    chunked_multi_hot_cross_entropy,
    count_valid_targets,
    multi_hot_cross_entropy,
    next_bag_targets,
)


def make_inputs(part: str, rows: int, vocab: int, s: int, dim: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    targets = next_bag_targets(torch.randint(0, vocab, (1, rows * s), generator=g), s)  # (1, rows, s)
    if part == "logits":
        return {"logits": torch.randn(1, rows, vocab, generator=g).mul_(2), "targets": targets}
    return {"hidden": torch.randn(1, rows, dim, generator=g), "weight": torch.randn(vocab, dim, generator=g).mul_(0.05),
            "targets": targets}


def reference_loss(logits, targets):
    """The paper's loss as written (App. A, Listing 3): s F.cross_entropy calls, mean of means."""
    V, s = logits.shape[-1], targets.shape[-1]
    pred = logits.reshape(-1, V).float()
    y = targets.reshape(-1, s)
    return sum(F.cross_entropy(pred, y[:, i], ignore_index=-100) for i in range(s)) / s


def variant_fn(name: str, inputs: dict):
    """A function running forward + backward of one variant; returns (loss, grads)."""
    if "logits" in inputs:
        fn = {"reference": reference_loss, "superpose": multi_hot_cross_entropy}[name]

        def run():
            z = inputs["logits"].detach().requires_grad_()
            loss = fn(z, inputs["targets"])
            loss.backward()
            return loss.detach(), (z.grad,)
        return run

    targets = inputs["targets"]
    denom = count_valid_targets(targets)

    def run():
        h = inputs["hidden"].detach().requires_grad_()
        w = inputs["weight"].detach().requires_grad_()
        if name == "dense":
            loss = multi_hot_cross_entropy(h @ w.t(), targets, reduction="sum") / denom
        else:
            loss = chunked_multi_hot_cross_entropy(h, w, targets, chunk_rows=int(name.split("-")[1])) / denom
        loss.backward()
        return loss.detach(), (h.grad, w.grad)
    return run


def peak_memory(args, variant: str, s: int) -> dict:
    """Run one variant once in a fresh interpreter; its RSS high-water mark over the inputs."""
    cmd = [sys.executable, __file__, "--child", variant, "--part", args.part, "--rows", str(args.rows), "--vocab",
           str(args.vocab), "--dim", str(args.dim), "--bag-size", str(s), "--threads", str(torch.get_num_threads())]
    cmd += ["--keep-freed-memory"] if args.keep_freed_memory else []
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _status_kib(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def child(args) -> None:
    """Inputs first; then the resident high-water mark is reset to the current RSS (Linux
    /proc/self/clear_refs), one forward + backward runs, and its growth is the variant's peak."""
    inputs = make_inputs(args.part, args.rows, args.vocab, args.bag_size, args.dim)
    fn = variant_fn(args.child, inputs)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to VmRSS
        base, peak_of = _status_kib("VmRSS"), lambda: _status_kib("VmHWM")
    except OSError:  # no procfs: ru_maxrss also counts the inputs' construction
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak_of = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # noqa: E731
    fn()
    peak = peak_of()
    print(json.dumps({"base_mib": base / 1024, "peak_mib": peak / 1024, "extra_mib": (peak - base) / 1024}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", choices=("both", "logits", "head"), default="both")
    ap.add_argument("--rows", type=int, default=8192, help="B*L positions")
    ap.add_argument("--vocab", type=int, default=32768)
    ap.add_argument("--dim", type=int, default=128, help="model width for part head")
    ap.add_argument("--bag-size", type=int, default=6)
    ap.add_argument("--chunks", default="256,1024", help="chunk_rows values for part head")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--no-memory", action="store_true", help="skip the per-variant memory subprocesses")
    ap.add_argument("--keep-freed-memory", action="store_true",
                    help="apply superpose.training.perf.keep_freed_memory() first, as the trainer does on CPU")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.keep_freed_memory:
        keep_freed_memory()
    if args.child:
        return child(args)
    if args.part == "both":
        for part in ("logits", "head"):
            subprocess.run([sys.executable, __file__, *sys.argv[1:], "--part", part], check=True)
        return
    print_machine(f"benchmarks/loss.py --part {args.part}")
    print(f"shape: B*L={args.rows} positions, V={args.vocab}" + (f", D={args.dim}" if args.part == "head" else "")
          + f"; {args.repeats} interleaved repeats after 1 warm-up; threads={torch.get_num_threads()}; "
          f"keep_freed_memory={args.keep_freed_memory}; {load_average()}")
    if args.part == "logits":
        cases = [(args.bag_size, ["reference", "superpose"])]
    else:
        chunks = [f"chunk-{c}" for c in args.chunks.split(",")]
        cases = [(1, ["dense", *chunks]), (args.bag_size, ["dense", *chunks])]
    for s, names in cases:
        inputs = make_inputs(args.part, args.rows, args.vocab, s, args.dim)
        fns = {n: variant_fn(n, inputs) for n in names}
        base_loss, base_grads = fns[names[0]]()
        err = {}
        for n in names[1:]:
            loss, grads = fns[n]()
            diffs = [float((a - b).abs().max()) for a, b in zip(grads, base_grads)]
            err[n] = max([abs(float(loss - base_loss)), *diffs])
        del base_grads
        times = interleaved(fns, repeats=args.repeats, warmup=1)
        mem = {} if args.no_memory else {n: peak_memory(args, n, s) for n in names}
        print(f"\ns = {s}: forward + backward, median of {args.repeats}; memory = peak RSS growth over the inputs")
        t0 = median(times[names[0]])
        for n in names:
            line = f"  {n:10s} {spread(times[n])}  speedup x{t0 / median(times[n]):.2f}"
            if mem:
                m0 = mem[names[0]]["extra_mib"]
                line += (f"  peak +{mem[n]['extra_mib']:.0f} MiB (x{mem[n]['extra_mib'] / m0:.2f}; total "
                         f"{mem[n]['peak_mib']:.0f} MiB)")
            if n in err:
                line += f"  max |diff| vs {names[0]} {err[n]:.1e}"
            print(line)
    print(f"\n{load_average()}")


if __name__ == "__main__":
    main()
