"""Token Superposition Training for any Hugging Face causal LM (the model need not be a superpose one).

    superposition_loss(model, input_ids, bag_size)   phase 1 on any PreTrainedModel, through its input
                                                     embeddings and `inputs_embeds`, positions 0..L-1
    next_token_loss(model, input_ids)                phase 2: the model's ordinary forward and CE
    TokenRows(tokens, seq_len, bag_size, phase1_rows)  rows of s*L + 1 tokens, then of L + 1
    TSTTrainer(model=..., args=..., train_tokens=..., seq_len=L, bag_size=s, tst_ratio=r)
        a `transformers.Trainer` that runs phase 1 for the first round(r * max_steps) optimizer
        steps and next-token training after, in one run: one optimizer, one LR scheduler, one
        token stream that carries on across the switch.

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
from ..core.superposition import count_valid_targets, multi_hot_cross_entropy, next_bag_targets, superpose_embeddings
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
                       reduction: str = "mean") -> Tensor:
    """Phase-1 loss of a Hugging Face causal LM on rows of s*L + 1 raw tokens.

    input_ids: (B, s*L + 1). The first s*L tokens are the input: each bag of s contiguous token
    embeddings is averaged into one position (fp32 accumulation), and the model runs on the
    (B, L, D) result through `inputs_embeds` with position ids 0..L-1. The last s*L tokens are the
    next-token labels, grouped into next-bag targets; the loss is the multi-hot cross-entropy
    (reduction "mean": the paper's loss; "sum": divide by `count_valid_targets`).
    With bag_size = 1 it is ordinary next-token cross-entropy.

    A transformers mixture-of-experts model (Qwen3-MoE, Mixtral, ...) also adds its router
    load-balancing loss times router_aux_loss_coef, as its own forward(labels=...) would (for
    "sum", times the valid-target count, so the division leaves it whole; "none" leaves it out).
    In phase 1 its routers route the superposed positions (see README, Mixture of experts).
    """
    emb = _input_embeddings(model)
    if input_ids.ndim != 2 or (input_ids.shape[1] - 1) % bag_size or input_ids.shape[1] < bag_size + 1:
        raise UserError(f"input_ids has shape {tuple(input_ids.shape)}; superposition_loss takes (B, s*L + 1) rows, "
                        f"here s={bag_size}: the first s*L tokens are the input, the last s*L the labels")
    x, y = input_ids[:, :-1], input_ids[:, 1:]  # (B, s*L) each
    h = superpose_embeddings(emb(x), bag_size)  # (B, L, D)
    B, L = h.shape[:2]
    positions = torch.arange(L, device=h.device).expand(B, L)  # (B, L): bag j gets RoPE position j
    logits, aux = _forward(model, inputs_embeds=h, position_ids=positions)  # (B, L, V), MoE: coef * aux
    targets = next_bag_targets(y, bag_size)  # (B, L, s)
    loss = multi_hot_cross_entropy(logits, targets, weights, reduction=reduction)
    if aux is None or reduction == "none":
        return loss
    return loss + (aux if reduction == "mean" else aux * count_valid_targets(targets, weights))


def next_token_loss(model, input_ids: Tensor) -> Tensor:
    """Phase-2 loss: the model's ordinary forward on the first L tokens of (B, L + 1) rows, mean
    cross-entropy (in fp32) against the last L, plus an MoE model's router aux loss times its
    coefficient (as `superposition_loss`)."""
    logits, aux = _forward(model, input_ids=input_ids[:, :-1])  # (B, L, V)
    loss = F.cross_entropy(logits.flatten(0, 1).float(), input_ids[:, 1:].flatten())
    return loss if aux is None else loss + aux


class TokenRows(torch.utils.data.IterableDataset):
    """Consecutive rows of one token stream: the first `phase1_rows` rows hold bag_size*seq_len + 1
    tokens, the rest seq_len + 1.

    A row of n + 1 tokens advances the position by n (its last token is only a label), so no token
    is read as an input twice before the stream ends; then it starts over (another epoch), unless
    `repeat=False`. The row lengths depend only on how many rows came before, never on timing, so
    a data loader that fetches ahead gets the right rows, and every iteration yields the same
    rows from the start (a resumed Trainer skips the ones it has seen).
    """

    def __init__(self, tokens, seq_len: int, bag_size: int = 1, phase1_rows: int = 0, repeat: bool = True):
        super().__init__()
        if not isinstance(tokens, (np.ndarray, Tensor)):
            tokens = np.asarray(tokens, dtype=np.int64)
        if tokens.ndim != 1:
            raise UserError(f"tokens must be one 1-D stream of token ids, got shape {tuple(tokens.shape)}")
        longest = (bag_size if phase1_rows else 1) * seq_len + 1
        if len(tokens) < longest:
            raise UserError(f"the token stream has {len(tokens)} tokens, fewer than one row of {longest}; "
                            "give more tokens or a smaller seq_len / bag_size")
        self.tokens, self.seq_len, self.bag_size, self.phase1_rows, self.repeat = (
            tokens, seq_len, bag_size, phase1_rows, repeat)

    def row_tokens(self, row: int) -> int:
        """Input tokens of row `row` (0-based): s*L in phase 1, L after."""
        return (self.bag_size if row < self.phase1_rows else 1) * self.seq_len

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

    def __init__(self, model=None, args=None, *, train_tokens, seq_len: int, bag_size: int, tst_ratio: float,
                 bag_weights: str | Tensor | None = None, eval_tokens=None, **kwargs):
        if args is None or args.max_steps is None or args.max_steps <= 0:
            raise UserError("TSTTrainer needs TrainingArguments(max_steps=N): phase 1 is a fraction of the steps")
        if args.dataloader_num_workers:
            raise UserError("TSTTrainer reads its token rows in the main process: set dataloader_num_workers=0")
        if bag_size < 1 or not 0.0 <= tst_ratio <= 1.0:
            raise UserError(f"bag_size must be >= 1 and tst_ratio in [0, 1], got {bag_size} and {tst_ratio}")
        for name in ("train_dataset", "eval_dataset", "data_collator"):
            if kwargs.get(name) is not None:
                raise UserError(f"TSTTrainer builds its own {name} from train_tokens / eval_tokens; do not pass one")
        self.schedule = Schedule.tst(args.max_steps, tst_ratio, bag_size)  # the LR stays the Trainer's own
        self.seq_len, self.bag_weights = seq_len, bag_weights
        rows_per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
        train = TokenRows(train_tokens, seq_len, bag_size, self.switch_step * rows_per_step)
        evaluation = None if eval_tokens is None else TokenRows(eval_tokens, seq_len, repeat=False)
        super().__init__(model=model, args=args, train_dataset=train, eval_dataset=evaluation,
                         data_collator=collate_rows, **kwargs)
        _input_embeddings(self.model)
        self.model_accepts_loss_kwargs = False  # transformers 4.x: divide by the accumulation steps

    @property
    def switch_step(self) -> int:
        return self.schedule.switch_step

    def bag_size_at(self, step: int) -> int:
        """s of optimizer step `step` (0-based): bag_size in phase 1, 1 after."""
        return self.schedule.phase(min(step, self.schedule.total_steps - 1)).bag_size

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        rows = inputs["input_ids"]  # (b, s*L + 1)
        s = self.bag_size_at(self.state.global_step) if model.training else 1
        assert rows.shape[1] == s * self.seq_len + 1, (
            f"step {self.state.global_step} expects rows of {s * self.seq_len + 1} tokens, got {rows.shape[1]}")
        loss = superposition_loss(model, rows, s, self.bag_weights) if s > 1 else next_token_loss(model, rows)
        return (loss, None) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Evaluation is next-token loss, in either phase: superpose's own evaluation of the batch's
        rows (B, L + 1), whose per-batch means the Trainer averages (every row has L targets)."""
        rows = self._prepare_inputs(inputs)["input_ids"]  # (B, L + 1)
        out = next_token_eval(lambda x: model(input_ids=x, use_cache=False).logits, rows, len(rows), rows.device)
        return torch.tensor(out["val_loss"], device=rows.device), None, None

    def log(self, logs: dict, *args, **kwargs) -> None:
        if "loss" in logs:
            logs = {**logs, "bag_size": self.bag_size_at(max(self.state.global_step - 1, 0))}
        super().log(logs, *args, **kwargs)
