"""Execution choices that change how fast a step runs, never what it computes.

- `attention_kernel(name, device)`: pin F.scaled_dot_product_attention to one backend
  (train.attention).
- `keep_freed_memory()`: on Linux with glibc, stop malloc from handing large freed blocks back to
  the kernel (train.keep_freed_memory, on by default for CPU runs). PyTorch's CPU tensors come
  from malloc; every block above glibc's mmap threshold (at most 32 MiB, e.g. one batch of
  16 x 128 x 4096 float32 logits) is a fresh mmap, so each step pays page faults to zero it again,
  and on a virtual machine those are expensive: an `exp` over 32 MiB took 25 ms with a fresh
  buffer and 5 ms with a reused one on the 2-core VM of benchmarks/records/. Keeping freed memory
  in the heap lets the next step reuse it. The cost: the process's resident memory stays at its
  high-water mark instead of shrinking between steps.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import sys

import torch

from .errors import UserError

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


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers
_kept = False


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds to 2 GiB for this process (once); True if applied.

    Blocks up to 2 GiB then come from the heap and go back to it when freed, so a training
    loop's same-sized tensors reuse the same pages every step. A no-op (False) where the C
    library is not glibc (macOS, musl, Windows).
    """
    global _kept
    if _kept:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # glibc only  # noqa: B018
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    limit = 2**31 - 1
    _kept = bool(mallopt(_M_MMAP_THRESHOLD, limit)) and bool(mallopt(_M_TRIM_THRESHOLD, limit))
    return _kept
