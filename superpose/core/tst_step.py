"""One TST step's loss and the switch: the functions every front-end calls.

superpose's own `Trainer` (training/trainer.py, through `model_loss`) and the Hugging Face
`TSTTrainer` (interop/hf_trainer.py, through `superposition_loss`) compute a phase's loss with the
one `tst_loss` and apply the same switch. torchtitan's `TSTTrainer` (titan/trainer.py) owns its
forward and its loss call, so it plugs the same pieces in where torchtitan takes them: the bag
mean as a hook on its token embedding, `phase_targets`' targets and the multi-hot loss as its
loss object (tests/test_tst_spec.py holds the three to one loss and gradient):

    tst_loss(phase, embed, forward, rows)  rows (b, T + 1) -> the summed loss of one micro-batch
    phase_inputs(rows, phase)              rows (b, T + 1) -> inputs (b, T), T = s_in*L, and s_in
    phase_targets(rows, phase)             rows (b, T + 1) -> the phase's targets (b, L, s) or (b, L, 1)
    phase_weights(weights, target_bag)     the slot weights of the phase's target bag
    switch(optimizer, redraw, ...)         tst.reinit and tst.reset_optimizer, before the first next-token step

A row of `s_in*L + 1` raw tokens holds the inputs (the first s_in*L) and the next-token labels
(the last s_in*L); `bag_targets` turns the labels into the phase's targets. Only the models
differ, and a front-end says how through `embed` and `forward`: superpose's fuses the bag mean
into the embedding lookup and returns its `RouterStats`; a transformers model is fed
`inputs_embeds` and returns its own aux loss.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .losses import MCE
from .llama import Transformer
from .schedule import Phase
from .superposition import (bag_targets, chunked_multi_hot_cross_entropy, count_valid_targets, mi_bag_weights,
                            multi_hot_cross_entropy, superpose_token_embeddings)

Embed = Callable[[Tensor, int], Tensor]
"""embed(x, s_in): input ids (b, s_in*L) -> (b, L, D), the mean of each bag of s_in token
embeddings (`superpose_embeddings`; s_in = 1: the plain lookup)."""
RouterTerm = Callable[[Tensor], Tensor]
"""term(n): the router's load-balancing term to add to a summed loss over n valid targets."""
Forward = Callable[[Tensor], tuple[Tensor, RouterTerm | None]]
"""forward(h): (b, L, D) input embeddings, RoPE positions 0..L-1 -> (out, router term or None).
out is what `score` takes: the logits (b, L, V) for the default `score`."""
Score = Callable[[Tensor, Tensor, str | Tensor, str], Tensor]
"""score(out, targets, weights, loss): the summed bag loss of the forward's output."""


def phase_inputs(rows: Tensor, phase: Phase) -> tuple[Tensor, int]:
    """rows (b, T + 1) of a phase -> its inputs (b, T), T = s_in*L, and s_in (`Phase.input_bag`)."""
    return rows[:, :-1], phase.input_bag


def phase_targets(rows: Tensor, phase: Phase) -> Tensor:
    """rows (b, T + 1) of a phase -> its targets from the next-token labels rows[:, 1:]:
    (b, L, s) next bags, (b, L, 1) for mode=input, or (b, L, s) next windows for mode=output."""
    return bag_targets(rows[:, 1:], phase.bag_size, phase.mode)


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


def logits_score(logits: Tensor, targets: Tensor, weights: str | Tensor, loss: str) -> Tensor:
    """The default `score`: the summed multi-hot loss of logits (b, L, V) against targets (b, L, s)."""
    return multi_hot_cross_entropy(logits, targets, weights, reduction="sum", loss=loss)


def tst_loss(phase: Phase, embed: Embed, forward: Forward, rows: Tensor, weights: str | Tensor = "uniform",
             loss: str = MCE.name, targets: Tensor | None = None, score: Score = logits_score) -> Tensor:
    """The summed TST loss of one micro-batch in `phase`; divide it by the global target count
    (`count_valid_targets` of the step's targets, summed over micro-batches and ranks).

        rows (b, T + 1) --phase_inputs--> x (b, s_in*L) --embed--> h (b, L, D) --forward--> out
        rows --phase_targets--> targets (b, L, s) or (b, L, 1)
        score(out, targets, weights, loss) [+ the router term of the batch's target count]

    weights: the phase's slot weights (`phase_weights`), loss: its bag loss's name
    (`TSTSpec.phase_loss`); targets: the `phase_targets` of rows, made here when not given. With
    bag_size = 1 it is the model's next-token cross-entropy, summed, bit for bit.

    A mixture-of-experts forward also returns its router term: its load-balancing loss (a
    statistic of this micro-batch, as transformers computes it per forward) times
    router_aux_coef times n, n = this micro-batch's valid-target count, so that after the
    division by the global count the step's loss is the LM loss + router_aux_coef * (the
    target-weighted mean of the micro-batches' aux).
    """
    x, s_in = phase_inputs(rows, phase)  # (b, T)
    h = embed(x, s_in)  # (b, L, D)
    if targets is None:
        targets = phase_targets(rows, phase)  # (b, L, s), or (b, L, 1) for input-only
    out, router_term = forward(h)
    total = score(out, targets, weights, loss)
    if router_term is None:
        return total
    return total + router_term(count_valid_targets(targets, weights, loss=loss))


def model_loss(model: Transformer, rows: Tensor, phase: Phase, weights: str | Tensor = "uniform",
               loss: str = MCE.name, chunk_rows: int = 0, router_log: list | None = None,
               targets: Tensor | None = None) -> Tensor:
    """`tst_loss` of superpose's own model (the trainer's loss, compiled whole under train.compile).

    The bag mean is fused into the embedding lookup (`superpose_token_embeddings`). chunk_rows > 0
    fuses the LM head into the loss, that many positions at a time, so the (b*L, V) logits never
    exist at once (`chunked_multi_hot_cross_entropy`). A mixture-of-experts model
    (core/qwen3_moe.py) also returns its routing: router_log, when given, gets (aux * n,
    per-layer expert counts (M, E)), detached, for the metrics. A dense model returns no routing.
    """
    def embed(x: Tensor, s_in: int) -> Tensor:
        # = superpose_embeddings(model.embed(x), s_in), with the lookup and bag mean fused
        return model.embed(x) if s_in == 1 else superpose_token_embeddings(x, model.embed_tokens.weight, s_in)

    def forward(h: Tensor) -> tuple[Tensor, RouterTerm | None]:
        out, router = model(inputs_embeds=h, return_hidden=bool(chunk_rows), return_router=True)
        if router is None:
            return out, None

        def term(n: Tensor) -> Tensor:
            aux = router.aux_loss() * n  # () float32
            if router_log is not None:
                router_log.append((aux.detach(), router.counts))
            return model.config.router_aux_coef * aux

        return out, term

    def hidden_score(hidden: Tensor, targets: Tensor, weights: str | Tensor, loss: str) -> Tensor:
        # hidden (b, L, D): the head runs inside the loss, chunk_rows positions at a time
        return chunked_multi_hot_cross_entropy(hidden, model.lm_head.weight, targets, weights,
                                               chunk_rows=chunk_rows, loss=loss)

    return tst_loss(phase, embed, forward, rows, weights, loss, targets,
                    score=hidden_score if chunk_rows else logits_score)


REINIT = {"none": (), "embeddings": ("input",), "head": ("output",), "both": ("input", "output")}
"""tst.reinit -> the weights re-drawn at the switch: none, the input embedding and/or the LM head."""


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
    if REINIT[reinit]:
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
