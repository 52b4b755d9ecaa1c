"""What every benchmark script shares: the machine it ran on, interleaved timing, synthetic data,
and the measured matmul peak that model FLOPs utilisation (MFU) is reported against.

Timing rule: variants are measured in the same process, interleaved (A, B, A, B, ... with the
order reversed every other round) after a warm-up, and summarised by the median. A slow spell of a
shared machine then hits every variant alike, and the ratios stay meaningful even when the
absolute times do not. The load average at the start and end of a run is printed with the numbers.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from collections.abc import Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing


def sync(device: torch.device | str = "cpu") -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def machine(device: torch.device | str = "cpu") -> dict:
    """The machine and software versions a record needs, plus the load average right now."""
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                      if line.startswith("MemTotal"))
    except (OSError, StopIteration):
        mem_kb = 0
    info = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "cpu": cpu, "cores": os.cpu_count(),
            "memory_gib": round(mem_kb / 2**20, 1), "threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "python": platform.python_version(),
            "torch": torch.__version__, "numpy": np.__version__, "platform": platform.platform(),
            "load_average": os.getloadavg()}
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        info["git"] = sha + ("+uncommitted" if dirty else "") if sha else "unknown"
    except (OSError, subprocess.SubprocessError):
        info["git"] = "unknown"
    return info


def print_machine(title: str, device: torch.device | str = "cpu") -> dict:
    info = machine(device)
    print(f"== {title}")
    print("   " + json.dumps(info))
    return info


def load_average() -> str:
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1,
                device: torch.device | str = "cpu") -> dict[str, list[float]]:
    """Seconds per call of each function, measured in turns: warmup rounds, then `repeats` rounds
    each calling every function once (order reversed every other round)."""
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(warmup + repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            sync(device)
            t0 = time.perf_counter()
            fns[name]()
            sync(device)
            if r >= warmup:
                times[name].append(time.perf_counter() - t0)
    return times


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def spread(xs: list[float]) -> str:
    """'median (min-max, n)' in milliseconds."""
    return f"{median(xs) * 1e3:.1f} ms (min {min(xs) * 1e3:.1f}, max {max(xs) * 1e3:.1f}, n={len(xs)})"


def matmul_peak(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, n: int = 0,
                seconds: float = 3.0) -> float:
    """Measured dense matmul throughput in FLOP/s: the best of repeated n x n @ n x n products.

    This is the machine's practical peak for the kernels training uses, the honest denominator
    for MFU on a CPU (whose nominal peak depends on clocks and vector units nobody states)."""
    device = torch.device(device)
    n = n or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    torch.mm(a, b, out=out)  # warm-up: kernel selection, page faults
    sync(device)
    best, deadline = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        sync(device)
        t0 = time.perf_counter()
        torch.mm(a, b, out=out)
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def synthetic_data(path: Path, vocab_size: int, train_tokens: int = 2_000_000, val_tokens: int = 70_000,
                   mean_doc_tokens: int = 400, seed: int = 0) -> Path:
    """A prepared data directory of uniformly random tokens in documents of random length.

    Throughput does not depend on what the tokens are, so benchmarks need no corpus (and no
    network). The layout is exactly `superpose prepare`'s (shards, doc offsets, meta, tokenizer),
    so the real loader reads it. Token 0 is end-of-text; the tokenizer file is a stub that only
    knows it (bits per byte are meaningless here; losses are those of random text, about log V).
    """
    from tokenizers import AddedToken, Tokenizer, models

    from superpose.data.shards import DATA_FORMAT_VERSION, ShardWriter, integrity_record, token_dtype

    path = Path(path)
    if (path / "meta.json").is_file():
        return path
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    dtype = token_dtype(vocab_size)
    splits = {}
    for name, n in (("train", train_tokens), ("val", val_tokens)):
        tokens = rng.integers(1, vocab_size, n, dtype=np.int64)
        starts = np.cumsum(rng.geometric(1 / mean_doc_tokens, n // 8))
        starts = np.concatenate([[0], starts[starts < n - 1]])
        tokens[starts[1:] - 1] = 0  # each document ends with end-of-text
        writer = ShardWriter(path, name, dtype)
        writer.write(tokens)
        shards = [p.name for p in writer.close()]
        if name == "train":
            np.save(path / "train.docs.npy", starts.astype(np.int64))
        splits[name] = {"shards": shards, "documents": len(starts), "tokens": n, "bytes": n}
    tok = Tokenizer(models.BPE())
    tok.add_special_tokens([AddedToken("<|endoftext|>", special=True)])
    tok.save(str(path / "tokenizer.json"))
    meta = {"format_version": DATA_FORMAT_VERSION, "vocab_size": vocab_size, "eot_id": 0,
            "token_bytes": dtype.itemsize, "tokenizer": "synthetic", "seed": seed, "val_fraction": 0.0,
            "splits": splits, "sources": [{"name": "synthetic uniform random tokens"}],
            **integrity_record(path, splits)}  # the current format always carries it
    (path / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return path


def fmt_flops(x: float) -> str:
    for unit, scale in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if x >= scale:
            return f"{x / scale:.2f} {unit}"
    return f"{x:.0f} FLOP"


def bench_config(preset: str, overrides: list[str], data: str | None, vocab_size: int | None = None,
                 workdir: Path | None = None):
    """A preset with `section.field=value` overrides, on `data` (a prepared directory) or on
    synthetic tokens with the preset's vocabulary (written once under `workdir`, by default
    $SUPERPOSE_CACHE/bench, i.e. ~/.cache/superpose/bench)."""
    from superpose.overrides import parse_overrides, set_fields
    from superpose.presets import preset as get_preset

    cfg = set_fields(get_preset(preset), parse_overrides([o if o.startswith("--") else "--" + o for o in overrides]))
    vocab = vocab_size or cfg.model.vocab_size or cfg.data.vocab_size
    if not data:
        from superpose.data.default_corpus import cache_dir

        workdir = Path(workdir or cache_dir() / "bench")  # $SUPERPOSE_CACHE/bench
        data = str(synthetic_data(workdir / f"synthetic-v{vocab}", vocab))
    from superpose.data import open_dataset
    from superpose.training.build import resolve_from_data

    cfg.data.path = data
    return resolve_from_data(cfg, open_dataset(data)).validate()  # as the trainer does: the data's vocabulary


def bench_trainer(cfg, run_dir: Path):
    """A Trainer whose train_step can be called directly (nothing is written to run_dir)."""
    from superpose.data import open_dataset
    from superpose.training import build_trainer

    return build_trainer(cfg, Path(run_dir), open_dataset(cfg.data.path), log=lambda m: None)


def phases(bag_size: int):
    """A phase-1 (bags of `bag_size`) and a phase-2 Phase object for Trainer.train_step."""
    from superpose.core.schedule import Phase

    return Phase(1, "superposition", bag_size, 0, 1 << 30), Phase(2, "next-token", 1, 0, 1 << 30)
