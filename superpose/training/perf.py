"""Execution choices that change how fast a step runs, never what it computes.

- `compute_context(dtype, attention, device)`: what every forward of a run runs under: bf16
  autocast (train.dtype) and the pinned attention kernel (train.attention), in training, in its
  evaluations and in `superpose eval` alike.
- `attention_kernel(name, device)`: pin F.scaled_dot_product_attention to one backend
  (train.attention).
- `keep_freed_memory()`: on Linux with glibc, stop malloc from handing large freed blocks back to
  the kernel (train.keep_freed_memory, on by default for CPU runs). PyTorch's CPU tensors come
  from malloc; every block above glibc's mmap threshold (at most 32 MiB, e.g. one batch of
  16 x 128 x 4096 float32 logits) is a fresh mmap, so each step pays page faults to zero it again,
  and on a virtual machine those are expensive: an `exp` over 32 MiB took 25 ms into a fresh
  buffer and 5 ms into a reused one (1 thread, the 2-core VM of benchmarks/records/). Keeping
  freed blocks of up to 64 MiB in the heap lets the next step reuse them. The cost: the process
  keeps up to 1 GiB of freed memory resident instead of returning it between steps.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import sys

import torch

from ..errors import UserError

# train.attention -> the torch.nn.attention.SDPBackend member it pins ("auto": torch chooses).
ATTENTION_BACKENDS = {"math": "MATH", "flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION",
                      "cudnn": "CUDNN_ATTENTION"}
CUDA_ONLY_ATTENTION = ("efficient", "cudnn")


def attention_kernel(name: str, device: torch.device):
    """A context in which every F.scaled_dot_product_attention call uses the kernel `name`."""
    if name == "auto":
        return contextlib.nullcontext()
    if device.type != "cuda" and name in CUDA_ONLY_ATTENTION:
        raise UserError(f"train.attention={name} exists only on CUDA GPUs; on {device.type} use auto, math or flash")
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(getattr(SDPBackend, ATTENTION_BACKENDS[name]))


@contextlib.contextmanager
def compute_context(dtype: str, attention: str, device: torch.device):
    """bf16 autocast when dtype is "bfloat16" (the weights stay float32), inside the attention
    kernel `attention`. Disabled autocast is entered too: "float32" runs exactly as before."""
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
        with attention_kernel(attention, device):
            yield


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers
# Blocks up to 64 MiB come from the heap and are reused; larger ones stay fresh mmaps, as before:
# with a 2 GiB limit, the paper's reference loss (1 GiB blocks of several sizes) fragmented the
# heap to twice its peak. At most 1 GiB of free memory is kept at the top of the heap.
KEEP_BLOCKS_UP_TO = 64 << 20
KEEP_FREE_TOP = 1 << 30


def set_process_state(threads: int, keep_freed: bool, device: torch.device) -> None:
    """The settings of train.* that belong to the process, not to one run: torch's thread count
    (train.threads; 0 keeps torch's default) and, on CPU, `keep_freed_memory`. The entry point
    (`superpose train`, compare, sweep) sets them once, before anything is built: compare and
    sweep build several trainers in one process, and building one must not change what the
    others run under."""
    if threads:
        torch.set_num_threads(threads)
    if keep_freed and device.type == "cpu":
        keep_freed_memory()  # step-sized CPU buffers are reused, not page-faulted in again


def keep_freed_memory() -> bool:
    """Raise glibc's mmap threshold to 64 MiB and its trim threshold to 1 GiB for this process
    (setting them again changes nothing); True if applied.

    Blocks up to 64 MiB then come from the heap and go back to it when freed, so a training
    loop's same-sized tensors reuse the same pages every step. A no-op (False) where the C
    library is not glibc (macOS, musl, Windows).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # glibc only  # noqa: B018
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, KEEP_BLOCKS_UP_TO) and mallopt(_M_TRIM_THRESHOLD, KEEP_FREE_TOP))


# train.loss_chunk_rows = -1 (auto) fuses the LM head into the loss on CPU once a micro-batch's
# logits reach this many elements (4 MiB of float32). Below it both paths take well under a
# millisecond, and the unfused one stays bit for bit plain F.cross_entropy training.
AUTO_FUSE_MIN_LOGITS = 1 << 20


def auto_loss_chunk_rows(positions: int, vocab_size: int, dim: int, device: torch.device) -> int:
    """What train.loss_chunk_rows=-1 (auto) means for a micro-batch of `positions` positions.

    Measured on CPU (benchmarks/records/loss_*): the fused chunked head + loss was 1.25-1.7x
    faster than logits-then-loss for next-token training from 512 x 4096 to 8192 x 32768 logits,
    and 0.98-1.28x for bags of 6; it never holds the (positions, V) logits, so its memory does not
    grow with positions x V. Each chunk re-reads the (V, D) head weight and its gradient, so a
    chunk should be a few times D positions: 2 * D (at least 128) was the best or within ~5%.
    On GPUs nothing is measured yet (benchmarks/gpu.sh can time both), so auto stays unfused there.
    """
    if device.type != "cpu" or positions * vocab_size < AUTO_FUSE_MIN_LOGITS:
        return 0
    return max(128, 2 * dim)
