"""Data parallelism on PyTorch's own engine: torchrun, DDP or FSDP2, exact at any world size.

    torchrun --nproc_per_node N -m superpose train ... --parallel.mode ddp|fsdp

Everything the trainer needs to run as one of N processes is here; with one process (no
torchrun, or `parallel.mode=none`) every helper is the identity and the trainer runs exactly the
single-process code.

- **One global batch.** `train.batch_size` is the global batch B. All ranks walk the same
  `TrainLoader` (same seed, same (epoch, position)); each *reads* only its contiguous share of
  rows, `rank*B/N .. (rank+1)*B/N` (`Parallel.rows`), and cuts it into `train.grad_accum`
  micro-batches. So step k sees the same B sequences at any world size, the loader state is the
  same on every rank (a checkpoint resumes at any world size), and ranks read disjoint data.
- **Exact normalisation.** Every rank sums its micro-batch losses (reduction="sum") and divides
  by the *global* count of valid targets, the all-reduced sum of the per-rank counts
  (`superposition.count_valid_targets`: target tokens, weighted by g~ for non-uniform bag
  weights), fixed before the forward. Gradients are then *summed* over ranks, never averaged:
  DDP gets an all-reduce SUM comm hook, FSDP2 a gradient divide factor of 1 with sum-only
  collectives. The update is the gradient of (total summed loss / global count) whatever the
  split into ranks and micro-batches.
- **One forward module.** Phase 1 calls `model.embed` before `model(inputs_embeds=...)`; the
  wrappers only see what runs inside one module call, so `TSTForward` puts embedding,
  superposition, trunk and loss into one forward, and DDP / FSDP wrap that.
- **Agreement.** Decisions that end or change a step (NaN/Inf, a stop signal) are all-reduced,
  so every rank takes the same one. Only rank 0 logs and writes files.
- **Checkpoints** keep the single-process format (checkpoint.py): under FSDP the full
  (unsharded) model and optimizer states are gathered to rank 0 with
  `torch.distributed.checkpoint.state_dict` and written there (`full_state`); loading reads them on
  rank 0 and broadcasts them into the shards (`resume.restore_weights_and_optimizer`). A checkpoint therefore resumes at any world size and in any
  mode, and the final model.safetensors is the plain model a single process writes.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from dataclasses import dataclass, field
from datetime import timedelta
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.nn as nn
from torch import Tensor

from ..core.model import empty_model
from ..errors import UserError

def launched_by_torchrun() -> bool:
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def env_rank() -> int:
    """This process's rank from torchrun's environment (0 outside torchrun); readable before setup."""
    return int(os.environ.get("RANK", "0")) if launched_by_torchrun() else 0


def rank_tag() -> str:
    """'[rank R] ' in a job of several processes, else ''; prefixes error lines."""
    return f"[rank {env_rank()}] " if launched_by_torchrun() and int(os.environ["WORLD_SIZE"]) > 1 else ""


@dataclass
class Parallel:
    """Where this process stands in the job, and the few collectives the trainer uses."""

    mode: str = "none"
    """The mode in effect: none (one process, no process group), ddp or fsdp."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False
    """This process group was created here (and is destroyed by `shutdown`)."""
    notes: list[str] = field(default_factory=list)
    """What rank 0 should tell the user about the setup (a mode ignored outside torchrun, ...)."""

    @property
    def distributed(self) -> bool:
        return self.mode != "none"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def rows(self, batch_size: int) -> slice:
        """This rank's contiguous share of the global batch's rows."""
        share = batch_size // self.world_size
        return slice(self.rank * share, (self.rank + 1) * share)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def sum(self, t: Tensor) -> Tensor:
        """The sum of `t` over ranks (all-reduce SUM); `t` itself with one process."""
        if self.distributed:
            t = t.clone()
            dist.all_reduce(t)
        return t

    def max_int(self, value: int) -> int:
        """The largest of the ranks' values (used to agree on a stop signal)."""
        if not self.distributed:
            return value
        t = torch.tensor([value], dtype=torch.int64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item())

    def all_true(self, flag: bool) -> bool:
        """True when `flag` is true on every rank."""
        if not self.distributed:
            return flag
        t = torch.tensor([0 if flag else 1], dtype=torch.int64, device=self.device)
        dist.all_reduce(t)
        return int(t.item()) == 0


def setup(mode: str, device: torch.device, timeout_s: int = 1800, mixed_precision: str = "none") -> Parallel:
    """Read torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) and join the job's process
    group: gloo on CPU, nccl on CUDA (one GPU per process: cuda:LOCAL_RANK). Reuses a group that
    already exists. Outside torchrun, or with mode "none" and one process, it starts nothing."""
    notes = []
    if mixed_precision != "none" and (mode != "fsdp" or not launched_by_torchrun()):
        notes.append(f"warning: parallel.mixed_precision={mixed_precision} applies to parallel.mode=fsdp under "
                     "torchrun only; ignored (use --train.dtype=bfloat16 for autocast)")
    if not launched_by_torchrun():
        if mode != "none":
            notes.append(f"note: parallel.mode={mode} but this process was not started by torchrun: training in this "
                         "one process (launch with torchrun --nproc_per_node N -m superpose train ...)")
        return Parallel(device=device, notes=notes)
    world, rank, local = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0))
    if mode == "none":
        if world > 1:
            raise UserError(f"torchrun started {world} processes but parallel.mode=none; add --parallel.mode=ddp "
                            "(whole model on every rank) or --parallel.mode=fsdp (sharded)")
        return Parallel(device=device, notes=notes)
    if device.type == "cuda":
        if device.index is not None and device.index != local and world > 1:
            notes.append(f"note: train.device={device} ignored under torchrun: rank {rank} uses cuda:{local} "
                         "(its LOCAL_RANK); choose GPUs with CUDA_VISIBLE_DEVICES")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise UserError(f"parallel.mode={mode} runs on cpu (gloo) or cuda (nccl), not on {device}")
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(seconds=timeout_s),
                                **({"device_id": device} if device.type == "cuda" else {}))
    return Parallel(mode=mode, rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local,
                    device=device, owns_group=owns, notes=notes)


def shutdown(par: Parallel) -> None:
    if par.owns_group and dist.is_initialized():
        dist.destroy_process_group()


# ----------------------------------------------------------------------------- wrapping

class TSTForward(nn.Module):
    """Embedding, bag superposition, trunk and loss of one micro-batch in one module call.

    DDP syncs gradients through hooks set up by its own forward, and FSDP2 all-gathers the
    root's parameters (embedding, final norm, LM head) in the root module's forward; phase 1
    calls `model.embed` outside `model.forward`, so the wrappers wrap this module instead.
    forward(rows, phase, ...) returns `loss_fn(model, rows, phase, ...)` (the summed loss);
    forward(input_ids, logits=True) returns the plain model's logits (evaluation under FSDP).
    """

    def __init__(self, model: nn.Module, loss_fn: Callable[..., Tensor]):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, rows: Tensor, phase=None, weights: str | Tensor = "uniform", loss: str = "mce",
                chunk_rows: int = 0, logits: bool = False, router_log: list | None = None,
                targets: Tensor | None = None) -> Tensor:
        if logits:
            return self.model(rows)  # (b, T, V)
        return self.loss_fn(self.model, rows, phase, weights, loss, chunk_rows, router_log, targets)  # scalar, summed


def _allreduce_sum_hook(state, bucket):
    """DDP comm hook: gradients summed over ranks, not averaged (the loss is already divided by
    the global target count)."""
    return dist.all_reduce(bucket.buffer(), async_op=True).get_future().then(lambda fut: fut.value()[0])


def wrap(model: nn.Module, par: Parallel, loss_fn: Callable[..., Tensor], mixed_precision: str = "none") -> nn.Module:
    """The module a training step calls: TSTForward(model), wrapped in DDP, or fully_shard-ed per
    block and at the root (FSDP2). `model`'s parameters become DTensor shards under FSDP; build
    the optimizer after this."""
    fwd = TSTForward(model, loss_fn)
    if par.mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ddp = DistributedDataParallel(fwd, device_ids=[par.device.index] if par.device.type == "cuda" else None)
        ddp.register_comm_hook(None, _allreduce_sum_hook)
        return ddp
    if par.mode == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

        mesh = init_device_mesh(par.device.type, (par.world_size,))
        policy = MixedPrecisionPolicy()
        if mixed_precision == "bf16":  # bf16 compute copies of the weights; fp32 gradient reduction and masters
            policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        for block in model.layers:
            fully_shard(block, mesh=mesh, mp_policy=policy)
        fully_shard(fwd, mesh=mesh, mp_policy=policy)  # the root: embedding, final norm, LM head
        for m in fwd.modules():
            if isinstance(m, FSDPModule):  # reduce-scatter with SUM, no division by the world size
                m.set_force_sum_reduction_for_comms(True)
                m.set_gradient_divide_factor(1.0)
        return fwd
    return fwd


def grad_sync(fwd: nn.Module, par: Parallel, last: bool):
    """Context for one micro-batch: gradients are reduced over ranks only on the last one."""
    if par.mode == "ddp" and not last:
        return fwd.no_sync()
    if par.mode == "fsdp":
        fwd.set_requires_gradient_sync(last)
    return contextlib.nullcontext()


def local(t: Tensor) -> Tensor:
    """This rank's shard of a DTensor (FSDP parameters and gradients); any other tensor as is."""
    return t.to_local() if hasattr(t, "to_local") else t


def weights_finite(model: nn.Module) -> bool:
    """Whether this rank's weights (its shards under FSDP) are all finite; `Parallel.all_true` of
    it is the answer for the whole model."""
    return all(bool(torch.isfinite(local(p)).all()) for p in model.parameters())


def full(t: Tensor) -> Tensor:
    """A DTensor's full value (a global grad norm under FSDP); any other tensor as is."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def reshard(fwd: nn.Module | None, par: Parallel) -> None:
    """FSDP keeps the root's parameters gathered after a forward without backward (evaluation);
    shard them again so every parameter is a DTensor shard between steps."""
    if par.mode == "fsdp":
        fwd.reshard()


def step_stats(par: Parallel, loss_sum: Tensor, grad_norm: Tensor) -> tuple[float, float, bool]:
    """(global loss, global grad norm, finite) of a step, the same on every rank.

    loss_sum is this rank's share (its micro-batch losses, each already divided by the global
    count); the ranks' shares are summed. grad_norm is already global (DDP: gradients are
    all-reduced; FSDP: the norm of DTensor shards is reduced by DTensor). The finiteness flag is
    all-reduced with the loss, so a NaN seen on any rank stops or skips the step on all of them.
    """
    norm = full(grad_norm)
    if not par.distributed:
        loss, value = loss_sum.item(), norm.item()
        return loss, value, math.isfinite(loss) and math.isfinite(value)
    both = torch.stack([loss_sum.float(), (~torch.isfinite(norm)).float()])
    dist.all_reduce(both)
    loss, bad = both.tolist()
    return loss, norm.item(), math.isfinite(loss) and bad == 0


# ----------------------------------------------------------------------------- full state for checkpoints

def gather_full_state(model: nn.Module, optimizer: torch.optim.Optimizer | None, model_cfg
                      ) -> tuple[nn.Module | None, dict | None]:
    """FSDP: the full model (a plain CPU Transformer) and the optimizer state in the
    single-process `optimizer.state_dict()` format, on rank 0; (None, None) on the other ranks.
    A collective: every rank must call it."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict)

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)  # full tensors, on rank 0 only
    model_state = get_model_state_dict(model, options=options)
    optim_state = get_optimizer_state_dict(model, optimizer, options=options) if optimizer is not None else None
    if dist.get_rank() != 0:
        return None, None
    plain = empty_model(model_cfg, "cpu")
    plain.load_state_dict(model_state)
    return plain, (_optim_by_index(optim_state) if optim_state is not None else None)


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer | None, model_cfg, par: Parallel
               ) -> tuple[nn.Module | None, dict | None]:
    """What a checkpoint saves, in any mode: the model and the optimizer state (None without an
    optimizer) in the single-process format; under FSDP gathered to rank 0 (`gather_full_state`, a
    collective: every rank calls it; the others get (None, None))."""
    if par.mode == "fsdp":
        return gather_full_state(model, optimizer, model_cfg)
    return model, optimizer.state_dict() if optimizer is not None else None


def load_full_state(model: nn.Module, optimizer: torch.optim.Optimizer, plain: nn.Module | None,
                    optim_state: dict | None) -> None:
    """FSDP: rank 0's full model (a plain model) and optimizer state (single-process format)
    broadcast into every rank's shards. A collective; the other ranks pass None."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                         set_optimizer_state_dict)

    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    model_state, by_name = {}, {}
    if plain is not None:
        model_state = plain.state_dict()
        by_name = _optim_by_name(optim_state, model, optimizer)
    set_model_state_dict(model, model_state, options=options)
    set_optimizer_state_dict(model, optimizer, by_name, options=options)


def _optim_by_index(state: dict) -> dict:
    """FQN-keyed optimizer state (torch.distributed.checkpoint) -> `optimizer.state_dict()`
    format: parameters numbered 0, 1, ... in param-group order."""
    index: dict[str, int] = {}
    groups = [{**g, "params": [index.setdefault(name, len(index)) for name in g["params"]]}
              for g in state["param_groups"]]
    return {"state": {index[name]: s for name, s in state["state"].items()}, "param_groups": groups}


def _optim_by_name(state: dict, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The inverse of `_optim_by_index`: parameter i is the i-th parameter of `optimizer`'s
    groups, named as in `model` (the sharded Transformer; its names are the plain model's)."""
    names = {id(p): n for n, p in model.named_parameters()}
    order = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    groups, start = [], 0
    for g in state["param_groups"]:
        groups.append({**g, "params": order[start:start + len(g["params"])]})
        start += len(g["params"])
    return {"state": {order[i]: s for i, s in state["state"].items()}, "param_groups": groups}


# ----------------------------------------------------------------------------- errors

def describe_lost_peer(e: BaseException) -> str | None:
    """One line for an error that only says another rank went away (its own message says why),
    or None for any other exception."""
    if not launched_by_torchrun():
        return None
    dist_error = getattr(dist, "DistError", ())
    if not (isinstance(e, dist_error) or any(s in str(e) for s in ("Connection closed by peer",
                                                                    "Connection reset by peer"))):
        return None
    # "[.../gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:4517. This is ..."
    text = re.sub(r"^\[[^\]]*\]\s*", "", str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)
    return (f"lost contact with another rank ({text.split('. ')[0][:160]}); the job is ending: the failing "
            "rank's own message says why")
