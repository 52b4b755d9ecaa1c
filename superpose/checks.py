"""Checks of the arguments every verb shares, each in one place: a device, a seed, a model's memory.

    device(name, flag)            -> torch.device, or one line naming the flag and what this
                                     machine has (a CUDA device on a CPU-only torch, cuda:7 of 1)
    seed_problem(value, flag)     -> None, or what is wrong with a seed
    check_seed(value, flag)       the same as a UserError
    count_params(model_config)    parameters of a model, counted without allocating them
    check_model_memory(...)       refuse a model whose weights (and, to train it, gradients and
                                  AdamW's moments) cannot fit the memory free on its device,
                                  before anything is allocated

Why before: torch reports an impossible CPU allocation as a RuntimeError deep inside the model's
construction, and the kernel may kill the process outright when memory is overcommitted; a
count on the meta device costs nothing and can name the numbers.
"""

from __future__ import annotations

from .errors import UserError

SEED_MAX = 2**32 - 1
"""Seeds are in [0, 2^32 - 1]: numpy's generators refuse negative seeds, and the trainer derives
per-step seeds (seed * 1_000_003 + step) that must stay inside torch's 64-bit range."""


def seed_problem(value: object, flag: str) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= SEED_MAX:
        return f"{flag} must be a whole number from 0 to {SEED_MAX:,}, got {value!r}"
    return None


def check_seed(value: object, flag: str) -> None:
    problem = seed_problem(value, flag)
    if problem:
        raise UserError(problem)


def device(name: str | object, flag: str = "--device"):
    """The torch.device `name` stands for on this machine ("auto": cuda when there is one), or a
    UserError naming `flag`, the devices this machine has and the fix."""
    import torch

    if isinstance(name, torch.device):
        name = str(name)
    text = str(name).strip()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise UserError(f"{flag} {text!r} is not a device superpose runs on; use cpu, cuda or cuda:N")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch is a CPU-only build" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise UserError(f"{flag} {text}: {why}; use {flag} cpu")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise UserError(f"{flag} {text}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}; "
                            f"pick one of them")
    return dev


def free_memory(dev) -> int | None:
    """Bytes free for new allocations on `dev`: the GPU's free memory, or the system's available
    memory (Linux MemAvailable) for the CPU; None where it cannot be told."""
    import torch

    if dev.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(dev)[0])
        except (RuntimeError, AssertionError):
            return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def count_params(model_config) -> int:
    """Parameters of a resolved ModelConfig, counted on the meta device (nothing allocated)."""
    import torch

    from .core.model import model_class

    with torch.device("meta"):
        return model_class(model_config)(model_config).num_params()


def check_model_memory(num_params: int, dev, *, training: bool, what: str, fix: str, shards: int = 1) -> None:
    """Refuse a model whose fixed memory exceeds what `dev` has free: float32 weights (4 bytes a
    parameter); to train, also their gradients and AdamW's two moments (16 bytes a parameter,
    divided over `shards` processes under FSDP). Activations come on top, so this only catches
    the impossible, never a model that might fit."""
    per_param = 16 if training else 4
    need = num_params * per_param // max(shards, 1)
    free = free_memory(dev)
    if free is not None and need > free:
        use = "weights, gradients and AdamW state" if training else "float32 weights"
        raise UserError(f"{what} has {num_params:,} parameters: its {use} need {need / 1e9:,.1f} GB, and "
                        f"{dev} has {free / 1e9:,.1f} GB free; {fix}")
