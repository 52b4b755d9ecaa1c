"""The one place superpose.titan touches torchtitan's (and torch's) private names, behind a version check.

SUPPORTED_TORCHTITAN lists the torchtitan versions superpose.titan is tested with. `check_version()`
runs when `superpose.titan` is imported, before any torchtitan module: another version is refused in
one line (`TitanVersionError`), because the private layer builders and init constants that
`private_llama3()` / `private_qwen3()` hand to arch.py can change without notice between releases.

What torchtitan 0.3.0 needs to run on a CPU with gloo, and on stable torch 2.13.

torchtitan picks its device type once, at import (`torchtitan.tools.utils.device_type`): the
available accelerator, else "cuda", so on a machine without one its stock Trainer tries to use
CUDA. `use_cpu()` sets it to "cpu", with a small stand-in for `torch.cuda`'s device functions
(names, memory statistics) that the trainer's memory monitor and barriers call. A few torchtitan
modules copy the two names at import; they are patched too, so the order of imports does not
matter. Everything else (gloo as the process-group backend, DTensor/FSDP2 on CPU meshes) is
torchtitan's and torch's own code.

torchtitan 0.3.0 also calls `torch.distributed.set_timeout`, which stable torch 2.13 spells
`distributed_c10d._set_pg_timeout`; `ensure_torch_api()` adds the alias. Both are no-ops where
nothing is missing, and neither changes any arithmetic.
"""

from __future__ import annotations

import os
import sys
import types
from importlib import metadata

import torch

from ..errors import UserError

SUPPORTED_TORCHTITAN = ("0.3.0",)
TORCH_FLOOR = "2.13"  # the oldest torch superpose.titan is tested with (2.11 lacks what torchtitan imports)


class TitanVersionError(UserError, ImportError):
    """The installed torchtitan is not one superpose.titan supports (or is missing)."""


def check_version(installed: str | None = None) -> str:
    """The installed torchtitan version; a one-line TitanVersionError unless it is supported."""
    if installed is None:
        try:
            installed = metadata.version("torchtitan")
        except metadata.PackageNotFoundError:
            raise TitanVersionError("torchtitan is not installed; superpose.titan needs torchtitan "
                                    f"{' or '.join(SUPPORTED_TORCHTITAN)}: bash scripts/setup.sh, or "
                                    "pip install 'superpose[titan]'") from None
    if installed not in SUPPORTED_TORCHTITAN:
        raise TitanVersionError(f"torchtitan {installed} is installed; superpose.titan supports "
                                f"{' or '.join(SUPPORTED_TORCHTITAN)}: pip install torchtitan=="
                                f"{SUPPORTED_TORCHTITAN[-1]}")
    check_torch()
    return installed


def check_torch(fsdp: types.ModuleType | None = None) -> None:
    """torchtitan 0.3.0 imports `torch.distributed.fsdp.DataParallelMeshDims`, which torch 2.11 lacks
    (seen on an H200 image: the run died in torchtitan's imports, under torchrun, with a traceback).
    Checked by the name itself, not a version number, and said in one line before anything starts."""
    if fsdp is None:
        import torch.distributed.fsdp as fsdp
    if not hasattr(fsdp, "DataParallelMeshDims"):
        raise TitanVersionError(f"torch {torch.__version__} is installed; torchtitan "
                                f"{SUPPORTED_TORCHTITAN[-1]} needs torch >= {TORCH_FLOOR} (it imports "
                                f"torch.distributed.fsdp.DataParallelMeshDims): pip install "
                                f"'torch>={TORCH_FLOOR},<2.15'")


def private_llama3() -> types.SimpleNamespace:
    """torchtitan.models.llama3's private layer builder and init constants (torchtitan 0.3.0)."""
    from torchtitan.models import llama3

    return types.SimpleNamespace(build_layers=llama3._build_llama3_layers, embedding_init=llama3._EMBEDDING_INIT,
                                 norm_init=llama3._NORM_INIT, output_linear_init=llama3._output_linear_init)


def private_qwen3() -> types.SimpleNamespace:
    """torchtitan.models.qwen3's private MoE layer builder, init constants and norm (torchtitan 0.3.0)."""
    from torchtitan.models import qwen3

    return types.SimpleNamespace(build_moe_layers=qwen3._build_qwen3_moe_layers, embedding_init=qwen3._EMBEDDING_INIT,
                                 linear_init=qwen3._LINEAR_INIT, norm=qwen3._qwen3_norm)

# Modules that bind `device_type` / `device_module` by name at import (torchtitan 0.3.0).
_BOUND = ("torchtitan.tools.utils", "torchtitan.components.metrics", "torchtitan.distributed.utils",
          "torchtitan.distributed.parallel_dims", "torchtitan.models.common.token_dispatcher",
          "torchtitan.tools.profiler")


def _cpu_device_module() -> types.ModuleType:
    """`torch.cpu` plus the `torch.cuda`-style calls torchtitan makes on its device module."""
    m = types.ModuleType("superpose_titan_cpu")
    for name in dir(torch.cpu):
        if not name.startswith("__"):
            setattr(m, name, getattr(torch.cpu, name))
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    m.get_device_name = lambda *a, **k: "cpu"
    m.current_device = lambda: 0
    m.device_count = lambda: 1
    m.set_device = lambda *a, **k: None
    m.synchronize = lambda *a, **k: None
    m.empty_cache = lambda: None
    m.reset_peak_memory_stats = lambda *a, **k: None
    m.memory_stats = lambda *a, **k: {}  # the monitor reports -1 for what it cannot read
    m.get_device_properties = lambda *a, **k: types.SimpleNamespace(name="cpu", total_memory=memory)
    return m


def ensure_torch_api() -> None:
    """Alias the torch-nightly names torchtitan 0.3.0 calls onto their stable-torch spelling."""
    import torch.distributed as dist

    if not hasattr(dist, "set_timeout") and hasattr(dist.distributed_c10d, "_set_pg_timeout"):
        dist.set_timeout = dist.distributed_c10d._set_pg_timeout


def accelerator_present() -> bool:
    from torch._utils import _get_available_device_type

    return _get_available_device_type() is not None


def use_cpu() -> None:
    """Make torchtitan train on the CPU (gloo). Call before building a Trainer."""
    import importlib

    importlib.import_module("torchtitan.tools.utils")
    module = _cpu_device_module()
    for name in _BOUND:
        mod = sys.modules.get(name)
        if mod is not None:
            mod.device_type, mod.device_module = "cpu", module
    ensure_torch_api()


def device_type() -> str:
    """The device type torchtitan will use now."""
    from torchtitan.tools import utils

    return utils.device_type


def gloo_sum_reductions(model: torch.nn.Module) -> None:
    """FSDP2 on gloo: reduce-scatter with a plain SUM.

    torchtitan sets FSDP's gradient divide factor to 1 (its loss is already divided by the global
    target count), which FSDP2 carries out as ReduceOp.PREMUL_SUM; gloo has no PREMUL_SUM. A
    factor of 1 makes it a plain sum, so forcing SUM is the same arithmetic.
    """
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.set_force_sum_reduction_for_comms(True)
