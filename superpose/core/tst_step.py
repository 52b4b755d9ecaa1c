"""One TST step's loss and the switch: the functions both trainers call.

superpose's own `Trainer` (training/trainer.py, through `superposed_loss`) and the Hugging Face
`TSTTrainer` (interop/hf_trainer.py, through `superposition_loss`) read a phase's rows the same
way and apply the same switch:

    phase_inputs(rows, bag_size, mode)   rows (b, T + 1) -> inputs (b, T), s_in (tokens per input position)
    phase_targets(rows, bag_size, mode)  rows (b, T + 1) -> the phase's targets (b, L, s) or (b, L, 1)
    phase_weights(weights, target_bag)   the slot weights of the phase's target bag
    switch(optimizer, redraw, ...)       tst.reinit and tst.reset_optimizer, before the first next-token step

A row of `s_in*L + 1` raw tokens holds the inputs (the first s_in*L) and the next-token labels
(the last s_in*L); `bag_targets` turns the labels into the phase's targets. Only the models
differ: superpose's fuses the bag mean into the embedding lookup and returns its `RouterStats`; a
transformers model is fed `inputs_embeds` and returns its own aux loss.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .losses import MCE
from .model import Transformer
from .superposition import (bag_targets, chunked_multi_hot_cross_entropy, count_valid_targets, input_bag,
                                  mi_bag_weights, multi_hot_cross_entropy, superpose_token_embeddings)


def phase_inputs(rows: Tensor, bag_size: int, mode: str = "full") -> tuple[Tensor, int]:
    """rows (b, T + 1) of a phase -> its inputs (b, T), T = s_in*L, and s_in (`input_bag`)."""
    return rows[:, :-1], input_bag(bag_size, mode)


def phase_targets(rows: Tensor, bag_size: int, mode: str = "full") -> Tensor:
    """rows (b, T + 1) of a phase -> its targets from the next-token labels rows[:, 1:]:
    (b, L, s) next bags, (b, L, 1) for mode=input, or (b, L, s) next windows for mode=output."""
    return bag_targets(rows[:, 1:], bag_size, mode)


def phase_weights(weights: str | Tensor | dict | None, target_bag: int, mi_fit: dict | None = None
                  ) -> str | Tensor | None:
    """The slot weights of a phase whose positions have `target_bag` targets: "uniform" for one
    target; for a mutual-information fit (`weights` "mi" with the run's `mi_fit`, or the fit itself
    as a dict: {"a": ..., "k": ...} or superpose's mi.json record) the weights it gives bags of this
    size (`mi_bag_weights`); else `weights` as given (a scheme's name, a tensor, None = uniform)."""
    if target_bag == 1:
        return "uniform"
    if isinstance(weights, str) and weights == "mi" and mi_fit is not None:  # without a fit, bag_weights refuses "mi"
        weights = mi_fit
    if isinstance(weights, dict):
        return mi_bag_weights(weights.get("fit", weights), target_bag)
    return weights


def superposed_loss(model: Transformer, rows: Tensor, bag_size: int, weights: str | Tensor = "uniform",
                    chunk_rows: int = 0, router_log: list | None = None, mode: str = "full",
                    loss: str = MCE.name, targets: Tensor | None = None) -> Tensor:
    """Summed bag (or next-token) loss of one micro-batch of superpose's model; divide by the
    global target count.

    rows: (b, T + 1) raw tokens (`phase_inputs`); targets: their `phase_targets`, made here when
    not given. With bag_size = 1 this is model(x) and a summed F.cross_entropy, bit for bit, in
    every mode. chunk_rows > 0 fuses the LM head into the loss, that many positions at a time, so
    the (b*L, V) logits never exist at once (`chunked_multi_hot_cross_entropy`). loss: the name of
    a core/losses.py entry.

    A mixture-of-experts model (core/qwen3_moe.py) also returns its routing: its load-balancing
    loss `aux` (a statistic of this micro-batch, as transformers computes it per forward) is added
    as router_aux_coef * aux * n, n = this micro-batch's valid-target count, so that after the
    division by the global count the step's loss is the LM loss + router_aux_coef * (the
    target-weighted mean of the micro-batches' aux). router_log, when given, gets (aux * n,
    per-layer expert counts (M, E)), detached, for the metrics. A dense model returns no routing.
    """
    x, s_in = phase_inputs(rows, bag_size, mode)  # (b, T)
    # = superpose_embeddings(model.embed(x), s_in), with the lookup and bag mean fused
    h = model.embed(x) if s_in == 1 else superpose_token_embeddings(x, model.embed_tokens.weight, s_in)
    if targets is None:
        targets = phase_targets(rows, bag_size, mode)  # (b, L, s), or (b, L, 1) for input-only
    out, router = model(inputs_embeds=h, return_hidden=bool(chunk_rows), return_router=True)
    if chunk_rows:  # out: hidden states (b, L, D)
        total = chunked_multi_hot_cross_entropy(out, model.lm_head.weight, targets, weights, chunk_rows=chunk_rows,
                                                loss=loss)
    else:  # out: logits (b, L, V)
        total = multi_hot_cross_entropy(out, targets, weights, reduction="sum", loss=loss)
    if router is None:
        return total
    aux = router.aux_loss() * count_valid_targets(targets, weights, loss=loss)  # () float32
    if router_log is not None:
        router_log.append((aux.detach(), router.counts))
    return total + model.config.router_aux_coef * aux


REINIT = {"embeddings": ("input",), "head": ("output",), "both": ("input", "output")}
"""tst.reinit -> the weights re-drawn at the switch: the input embedding and/or the LM head."""


def switch(optimizer: torch.optim.Optimizer, redraw: Callable[[tuple[str, ...], torch.Generator], dict],
           reinit: str, reset_optimizer: bool, seed: int, step: int) -> list[str]:
    """The switch-time ablations (tst.reinit, tst.reset_optimizer), applied just before the first
    next-token step; returns what was done, for the log.

    redraw(parts, generator) re-draws `parts` ("input", "output": `REINIT`) in place from the
    trainer's own distributions and returns {name: parameter} of what it re-drew. The generator is
    seeded by (seed, step), the same on every rank and after a resume, so a run resumed from a
    checkpoint before the switch re-draws the same weights. A re-drawn tensor's optimizer state
    goes with it: moments of the old weights mean nothing for the new ones.
    """
    done = []
    if reinit != "none":
        redrawn = redraw(REINIT[reinit], torch.Generator().manual_seed(seed * 1_000_003 + step))
        for param in redrawn.values():
            optimizer.state.pop(param, None)
        done.append(f"re-initialised {', '.join(redrawn)} (tst.reinit={reinit}) and reset their optimizer state")
    if reset_optimizer:
        optimizer.state.clear()  # AdamW re-creates moments and step count at its next step
        done.append("optimizer state reset (tst.reset_optimizer)")
    return done


def fresh_redraw(model: Transformer) -> Callable[[tuple[str, ...], torch.Generator], dict]:
    """superpose's `redraw` for `switch`: new draws from `Transformer.fresh_weights` (the
    distributions `init_weights` uses), copied into the model (every rank's shards under FSDP)."""
    names = {"input": "embed_tokens.weight", "output": "lm_head.weight"}

    def redraw(parts: tuple[str, ...], gen: torch.Generator) -> dict:
        params = dict(model.named_parameters())
        fresh = model.fresh_weights([names[p] for p in parts], gen)  # {name: full tensor on the CPU}
        for name, value in fresh.items():
            copy_full_(params[name], value)
        return {name: params[name] for name in fresh}

    return redraw


@torch.no_grad()
def copy_full_(param: Tensor, value: Tensor) -> None:
    """Write a full tensor (the same on every rank) into a parameter: in place for a plain or DDP
    parameter, into this rank's shard for an FSDP2 (DTensor) one."""
    if hasattr(param, "device_mesh"):  # a DTensor
        from torch.distributed.tensor import distribute_tensor

        value = distribute_tensor(value.to(param.device, param.dtype), param.device_mesh, param.placements)
    param.copy_(value.to(param.device, param.dtype))
