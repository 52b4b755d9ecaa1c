"""Token Superposition Training for any Hugging Face causal LM (the model need not be a superpose one).

    superposition_loss(model, input_ids, bag_size)   phase 1 on any PreTrainedModel, through its input
                                                     embeddings and `inputs_embeds`, positions 0..L-1
    next_token_loss(model, input_ids)                phase 2: the model's ordinary forward and CE
    TokenRows(tokens, seq_len, bag_size, phase1_rows)  rows of s*L + 1 tokens, then of L + 1
    TSTTrainer(model=..., args=..., train_tokens=..., seq_len=L, bag_size=s, tst_ratio=r)
        a `transformers.Trainer` that runs phase 1 for the first round(r * max_steps) optimizer
        steps and next-token training after, in one run: one optimizer, one LR scheduler, one
        token stream that carries on across the switch.

The paper's ablations work here as in `superpose train`: mode="input"|"output", loss="mce_alt",
bag_weights="power"|"exp"|a tensor|a mutual-information fit, schedule="8:0.1,4:0.1" (a bag-size
curriculum), reset_optimizer=True and reinit="embeddings"|"head"|"both" at the switch.

Rows follow superpose's own loader: a row of `s*L + 1` raw tokens holds the inputs (the first
s*L) and the next-token labels (the last s*L). The TST math is `superpose.superposition`'s, so a
Llama exported from superpose gives the same phase-1 loss here as in superpose (tested).
"""

from __future__ import annotations

import inspect

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..core.schedule import Schedule
from ..core.superposition import (bag_targets, count_valid_targets, mi_bag_weights, multi_hot_cross_entropy,
                                  superpose_embeddings)
from ..errors import UserError
from ..inference.evaluate import next_token_eval

try:
    from transformers import Trainer
except ImportError as e:  # accelerate missing surfaces here too
    raise ImportError(f"superpose.hf needs transformers and accelerate ({e}): pip install 'superpose[hf]'") from e


def _input_embeddings(model) -> torch.nn.Module:
    """The model's token embedding, or a UserError saying why TST cannot run on it."""
    name = type(model).__name__
    try:
        emb = model.get_input_embeddings()
    except (NotImplementedError, AttributeError):
        emb = None
    if emb is None:
        raise UserError(f"{name} has no input embeddings (get_input_embeddings() gives none): TST averages token "
                        "embeddings into bags, so it needs a model that looks tokens up in an embedding")
    params = inspect.signature(model.forward).parameters
    if "inputs_embeds" not in params and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        raise UserError(f"{name}.forward takes no inputs_embeds: TST feeds it averaged embeddings, so it needs a "
                        "model whose forward accepts inputs_embeds")
    return emb


def router_aux_coef(model) -> float | None:
    """The load-balancing coefficient of a transformers mixture-of-experts model (one whose config
    has `output_router_logits`, such as Qwen3-MoE, Mixtral, Qwen2-MoE), else None."""
    model = getattr(model, "module", model)  # a DDP-wrapped model
    cfg = getattr(model, "config", None)
    if cfg is None or not hasattr(cfg, "output_router_logits"):
        return None
    return float(getattr(model, "router_aux_loss_coef", getattr(cfg, "router_aux_loss_coef", 0.0)))


def _forward(model, **inputs):
    """model(**inputs, use_cache=False) -> (logits, aux): aux is the model's own load-balancing loss
    (`output_router_logits=True`, computed by transformers exactly as its own training loss adds
    it) times its coefficient, or None for a dense model."""
    coef = router_aux_coef(model)
    if coef is None:
        return model(**inputs, use_cache=False).logits, None
    out = model(**inputs, use_cache=False, output_router_logits=True)
    return out.logits, coef * out.aux_loss


def superposition_loss(model, input_ids: Tensor, bag_size: int, weights: str | Tensor | None = None,
                       reduction: str = "mean", mode: str = "full", loss: str = "mce") -> Tensor:
    """Phase-1 loss of a Hugging Face causal LM on rows of s*L + 1 raw tokens.

    input_ids: (B, s*L + 1). The first s*L tokens are the input: each bag of s contiguous token
    embeddings is averaged into one position (fp32 accumulation), and the model runs on the
    (B, L, D) result through `inputs_embeds` with position ids 0..L-1. The last s*L tokens are the
    next-token labels, grouped into next-bag targets; the loss is the multi-hot cross-entropy
    (reduction "mean": the paper's loss; "sum": divide by `count_valid_targets`), or MCEAlt
    (loss="mce_alt"). With bag_size = 1 it is ordinary next-token cross-entropy.

    mode="input": the same bagged input, one target per position (the first token of the next
    bag). mode="output": rows of L + 1 tokens, the model's ordinary input, each position's
    target the next s tokens (`core.superposition.bag_targets`).

    A transformers mixture-of-experts model (Qwen3-MoE, Mixtral, ...) also adds its router
    load-balancing loss times router_aux_loss_coef, as its own forward(labels=...) would (for
    "sum", times the valid-target count, so the division leaves it whole; "none" leaves it out).
    In phase 1 its routers route the superposed positions (see README, Mixture of experts).
    """
    emb = _input_embeddings(model)
    s_in = 1 if mode == "output" else bag_size
    if input_ids.ndim != 2 or (input_ids.shape[1] - 1) % s_in or input_ids.shape[1] < s_in + 1:
        raise UserError(f"input_ids has shape {tuple(input_ids.shape)}; superposition_loss takes (B, s*L + 1) rows, "
                        f"here s={bag_size}: the first s*L tokens are the input, the last s*L the labels")
    x, y = input_ids[:, :-1], input_ids[:, 1:]  # (B, s*L) each (B, L) for mode="output"
    h = superpose_embeddings(emb(x), s_in)  # (B, L, D)
    B, L = h.shape[:2]
    positions = torch.arange(L, device=h.device).expand(B, L)  # (B, L): bag j gets RoPE position j
    logits, aux = _forward(model, inputs_embeds=h, position_ids=positions)  # (B, L, V), MoE: coef * aux
    targets = bag_targets(y, bag_size, mode)  # (B, L, s), (B, L, 1) for mode="input"
    total = multi_hot_cross_entropy(logits, targets, weights, reduction=reduction, loss=loss)
    if aux is None or reduction == "none":
        return total
    return total + (aux if reduction == "mean" else aux * count_valid_targets(targets, weights, loss=loss))


def next_token_loss(model, input_ids: Tensor) -> Tensor:
    """Phase-2 loss: the model's ordinary forward on the first L tokens of (B, L + 1) rows, mean
    cross-entropy (in fp32) against the last L, plus an MoE model's router aux loss times its
    coefficient (as `superposition_loss`)."""
    logits, aux = _forward(model, input_ids=input_ids[:, :-1])  # (B, L, V)
    loss = F.cross_entropy(logits.flatten(0, 1).float(), input_ids[:, 1:].flatten())
    return loss if aux is None else loss + aux


class TokenRows(torch.utils.data.IterableDataset):
    """Consecutive rows of one token stream: the first `phase1_rows` rows hold bag_size*seq_len + 1
    tokens, the rest seq_len + 1. `stages` [(rows, s), ...] gives several row lengths in turn
    instead (a bag-size curriculum: stage k's rows hold s_k*seq_len + 1 tokens), then seq_len + 1.

    A row of n + 1 tokens advances the position by n (its last token is only a label), so no token
    is read as an input twice before the stream ends; then it starts over (another epoch), unless
    `repeat=False`. The row lengths depend only on how many rows came before, never on timing, so
    a data loader that fetches ahead gets the right rows, and every iteration yields the same
    rows from the start (a resumed Trainer skips the ones it has seen).
    """

    def __init__(self, tokens, seq_len: int, bag_size: int = 1, phase1_rows: int = 0, repeat: bool = True,
                 stages: list[tuple[int, int]] | None = None):
        super().__init__()
        self.stages = stages if stages is not None else ([(phase1_rows, bag_size)] if phase1_rows else [])
        if not isinstance(tokens, (np.ndarray, Tensor)):
            tokens = np.asarray(tokens, dtype=np.int64)
        if tokens.ndim != 1:
            raise UserError(f"tokens must be one 1-D stream of token ids, got shape {tuple(tokens.shape)}")
        longest = max([s for _, s in self.stages] + [1]) * seq_len + 1
        if len(tokens) < longest:
            raise UserError(f"the token stream has {len(tokens)} tokens, fewer than one row of {longest}; "
                            "give more tokens or a smaller seq_len / bag_size")
        self.tokens, self.seq_len, self.bag_size, self.phase1_rows, self.repeat = (
            tokens, seq_len, bag_size, phase1_rows, repeat)

    def row_tokens(self, row: int) -> int:
        """Input tokens of row `row` (0-based): s*L in a stage that bags its input, L after."""
        end = 0
        for rows, s in self.stages:
            end += rows
            if row < end:
                return s * self.seq_len
        return self.seq_len

    def __iter__(self):
        pos, row = 0, 0
        while True:
            n = self.row_tokens(row)
            if pos + n + 1 > len(self.tokens):
                if not self.repeat:
                    return
                pos = 0
            yield {"input_ids": torch.as_tensor(np.asarray(self.tokens[pos:pos + n + 1]), dtype=torch.long)}
            pos += n
            row += 1


def collate_rows(rows: list[dict]) -> dict:
    """Stack equal-length rows into {"input_ids": (B, n + 1)}."""
    return {"input_ids": torch.stack([r["input_ids"] for r in rows])}


class TSTTrainer(Trainer):
    """`transformers.Trainer` with Token Superposition Training.

        trainer = TSTTrainer(model=model, args=TrainingArguments(max_steps=1000, ...),
                             train_tokens=ids, seq_len=512, bag_size=4, tst_ratio=0.3)
        trainer.train()

    The first round(tst_ratio * max_steps) optimizer steps are phase 1: each row holds
    bag_size*seq_len + 1 tokens of `train_tokens` (a 1-D array of token ids, e.g. tokenized
    documents joined by an end-of-text token) and the loss is `superposition_loss`. After that,
    rows hold seq_len + 1 tokens and the loss is `next_token_loss`. The optimizer, the LR scheduler
    (over all max_steps) and the position in the token stream carry across the switch. Evaluation
    (`eval_tokens`) is next-token loss in both phases. Logs carry `bag_size`.
    """

    # compute_loss returns a per-micro-batch mean: the Trainer divides it by the accumulation steps
    # (every micro-batch of a phase has the same number of targets, so that is the exact mean).
    loss_is_scaled_for_ga = False

    def __init__(self, model=None, args=None, *, train_tokens, seq_len: int, bag_size: int = 4, tst_ratio: float = 0.3,
                 bag_weights: str | Tensor | dict | None = None, eval_tokens=None, mode: str = "full", loss: str = "mce",
                 schedule: str = "", reset_optimizer: bool = False, reinit: str = "none", **kwargs):
        from ..config import Config, REINIT

        if args is None or args.max_steps is None or args.max_steps <= 0:
            raise UserError("TSTTrainer needs TrainingArguments(max_steps=N): phase 1 is a fraction of the steps")
        if args.dataloader_num_workers:
            raise UserError("TSTTrainer reads its token rows in the main process: set dataloader_num_workers=0")
        if bag_size < 1 or not 0.0 <= tst_ratio <= 1.0:
            raise UserError(f"bag_size must be >= 1 and tst_ratio in [0, 1], got {bag_size} and {tst_ratio}")
        for name in ("train_dataset", "eval_dataset", "data_collator"):
            if kwargs.get(name) is not None:
                raise UserError(f"TSTTrainer builds its own {name} from train_tokens / eval_tokens; do not pass one")
        # The same checks as superpose's own config (modes, losses, curricula, switch options).
        cfg = Config()
        cfg.tst.bag_size, cfg.tst.ratio, cfg.tst.mode, cfg.tst.loss = bag_size, tst_ratio, mode, loss
        cfg.tst.schedule, cfg.tst.reset_optimizer, cfg.tst.reinit = schedule, reset_optimizer, reinit
        cfg.tst.weights = bag_weights if isinstance(bag_weights, str) else "uniform"
        problems = [p for p in cfg.problems() if p.startswith("tst.")]
        if problems:
            raise UserError("; ".join(problems))
        self.schedule = Schedule.tst(args.max_steps, tst_ratio, bag_size, mode, schedule)  # the LR stays the Trainer's
        self.seq_len, self.bag_weights, self.loss_kind = seq_len, bag_weights, loss
        self.reset_optimizer, self.reinit, self._switched = reset_optimizer, reinit, False
        rows_per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
        stages = [(p.num_steps * rows_per_step, p.input_bag) for p in self.schedule.phases if p.index == 1]
        train = TokenRows(train_tokens, seq_len, stages=stages)
        evaluation = None if eval_tokens is None else TokenRows(eval_tokens, seq_len, repeat=False)
        super().__init__(model=model, args=args, train_dataset=train, eval_dataset=evaluation,
                         data_collator=collate_rows, **kwargs)
        _input_embeddings(self.model)
        self.model_accepts_loss_kwargs = False  # transformers 4.x: divide by the accumulation steps

    @property
    def switch_step(self) -> int:
        return self.schedule.switch_step

    def bag_size_at(self, step: int) -> int:
        """s of optimizer step `step` (0-based): bag_size in phase 1 (its stage's, in a curriculum), 1 after."""
        return self.phase_at(step).bag_size

    def phase_at(self, step: int):
        return self.schedule.phase(min(step, self.schedule.total_steps - 1))

    def weights_for(self, s: int) -> str | Tensor | None:
        """The slot weights of bags of s: a scheme's name, the tensor given, or a mutual-information
        fit ({"a": ..., "k": ...} or superpose's mi.json record) turned into weights for this s."""
        w = self.bag_weights
        if isinstance(w, dict):
            return mi_bag_weights(w.get("fit", w), s)
        return w

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        rows = inputs["input_ids"]  # (b, T + 1)
        step = self.state.global_step
        if model.training and step == self.switch_step > 0 and not self._switched:
            self._at_switch(model)
        phase = self.phase_at(step)
        T = phase.row_tokens(self.seq_len) if model.training else self.seq_len
        assert rows.shape[1] == T + 1, f"step {step} expects rows of {T + 1} tokens, got {rows.shape[1]}"
        if phase.bag_size > 1 and model.training:
            weights = self.weights_for(phase.target_bag) if phase.target_bag > 1 else None
            loss = superposition_loss(model, rows, phase.bag_size, weights, mode=phase.mode, loss=self.loss_kind)
        else:
            loss = next_token_loss(model, rows)
        return (loss, None) if return_outputs else loss

    def _at_switch(self, model) -> None:
        """reset_optimizer / reinit, once, before the first next-token step's first micro-batch (a
        Trainer resumed from a later checkpoint has them in its state already). Re-drawn weights
        are N(0, config.initializer_range), what transformers' `_init_weights` gives embeddings and
        linear layers, from a generator seeded by (args.seed, step); their optimizer state is
        dropped with them."""
        self._switched = True
        inner = getattr(self.optimizer, "optimizer", self.optimizer)  # accelerate wraps the torch optimizer
        if self.reinit != "none":
            model = getattr(model, "module", model)
            modules = {"embeddings": [model.get_input_embeddings()], "head": [model.get_output_embeddings()],
                       "both": [model.get_input_embeddings(), model.get_output_embeddings()]}[self.reinit]
            std = getattr(model.config.get_text_config(), "initializer_range", 0.02) or 0.02
            gen = torch.Generator().manual_seed(self.args.seed * 1_000_003 + self.state.global_step)
            with torch.no_grad():
                for m in modules:
                    m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * std)
                    inner.state.pop(m.weight, None)
        if self.reset_optimizer:
            inner.state.clear()

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Evaluation is next-token loss, in either phase: superpose's own evaluation of the batch's
        rows (B, L + 1), whose per-batch means the Trainer averages (every row has L targets)."""
        rows = self._prepare_inputs(inputs)["input_ids"]  # (B, L + 1)
        out = next_token_eval(lambda x: model(input_ids=x, use_cache=False).logits, rows, len(rows), rows.device)
        return torch.tensor(out["val_loss"], device=rows.device), None, None

    def log(self, logs: dict, *args, **kwargs) -> None:
        if "loss" in logs:  # the bag size of the step just taken
            logs = {**logs, "bag_size": self.bag_size_at(max(self.state.global_step - 1, 0))}
        super().log(logs, *args, **kwargs)
