"""Token Superposition Training for any Hugging Face causal LM (the model need not be a superpose one).

    superposition_loss(model, input_ids, bag_size)   phase 1 on any PreTrainedModel, through its input
                                                     embeddings and `inputs_embeds`, positions 0..L-1
    next_token_loss(model, input_ids)                phase 2: the model's ordinary forward and CE
    TokenRows(tokens, seq_len, bag_size, phase1_rows)  rows of s*L + 1 tokens, then of L + 1
    TSTTrainer(model=..., args=..., train_dataset=..., seq_len=L, tst=TSTSpec(bag_size=s, ratio=r))
        a `transformers.Trainer` that runs phase 1 for the first round(r * max_steps) optimizer
        steps and next-token training after, in one run: one optimizer, one LR scheduler, one
        shuffled token stream that carries on across the switch (the data side: `hf_data`).

The TST settings are superpose's own `TSTSpec` (core/tst_spec.py: the `tst` section of
`superpose train`, with its defaults and checks), so the paper's ablations work here as there:
mode="input"|"output", loss="mce_alt", weights="power"|"exp", schedule="8:0.1,4:0.1" (a bag-size
curriculum), reset_optimizer=True and reinit="embeddings"|"head"|"both" at the switch; slot
weights a string cannot name (a tensor, a mutual-information fit) are `bag_weights=`.

Rows follow superpose's own loader: a row of `s*L + 1` raw tokens holds the inputs (the first
s*L) and the next-token labels (the last s*L). The TST math is `superpose.core.superposition`'s, so a
Llama exported from superpose gives the same phase-1 loss here as in superpose (tested).
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import Tensor

from ..core.losses import MCE
from ..core.schedule import Phase, Schedule
from ..core.superposition import bag_weights as bag_weights_of
from ..core.superposition import mode_of, multi_hot_cross_entropy, superpose_embeddings
from ..core.tst_spec import TSTSpec
from ..core.tst_step import RouterTerm, phase_weights, switch, tst_loss
from ..errors import UserError
from ..inference.evaluate import next_token_eval
from .hf_data import DataError, ShuffledRows, TokenRows, token_source

try:
    from transformers import Trainer, TrainerCallback
except ImportError as e:  # accelerate missing surfaces here too
    raise ImportError(f"superpose.interop.hf_trainer needs transformers and accelerate ({e}): pip install 'superpose[hf]'") from e


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
                       reduction: str = "mean", mode: str = "full", loss: str = MCE.name) -> Tensor:
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
    In phase 1 its routers route the superposed positions (see docs/moe.md).
    """
    emb = _input_embeddings(model)
    phase = Phase.of(bag_size, mode_of(mode))
    s_in = phase.input_bag
    if input_ids.ndim != 2 or (input_ids.shape[1] - 1) % s_in or input_ids.shape[1] < s_in + 1:
        raise UserError(f"input_ids has shape {tuple(input_ids.shape)}; superposition_loss takes (B, s*L + 1) rows, "
                        f"here s={bag_size}: the first s*L tokens are the input, the last s*L the labels")

    def forward(h: Tensor) -> tuple[Tensor, RouterTerm | None]:  # h (B, L, D) -> logits (B, L, V)
        B, L = h.shape[:2]
        positions = torch.arange(L, device=h.device).expand(B, L)  # (B, L): bag j gets RoPE position j
        logits, aux = _forward(model, inputs_embeds=h, position_ids=positions)  # MoE: coef * aux
        if aux is None or reduction == "none":
            return logits, None
        return logits, (lambda n: aux) if reduction == "mean" else (lambda n: aux * n)

    return tst_loss(phase, lambda x, s: superpose_embeddings(emb(x), s), forward, input_ids, weights, loss,
                    score=lambda out, targets, w, kind: multi_hot_cross_entropy(out, targets, w, reduction=reduction,
                                                                                loss=kind))


def next_token_loss(model, input_ids: Tensor) -> Tensor:
    """Phase-2 loss: the model's ordinary forward on the first L tokens of (B, L + 1) rows, mean
    cross-entropy (in fp32) against the last L, plus an MoE model's router aux loss times its
    coefficient (as `superposition_loss`)."""
    logits, aux = _forward(model, input_ids=input_ids[:, :-1])  # (B, L, V)
    loss = F.cross_entropy(logits.flatten(0, 1).float(), input_ids[:, 1:].flatten())
    return loss if aux is None else loss + aux


def collate_rows(rows: list[dict]) -> dict:
    """Stack equal-length rows into {"input_ids": (B, n + 1)}."""
    return {"input_ids": torch.stack([r["input_ids"] for r in rows])}


def eos_token_id(tokenizer, model) -> int | None:
    """The end-of-text id that joins documents: the tokenizer's eos, else the model config's (the
    first, if it lists several), else None."""
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        cfg = getattr(model, "config", None)
        eos = getattr(cfg.get_text_config(), "eos_token_id", None) if cfg is not None else None
    if isinstance(eos, (list, tuple)):
        eos = eos[0] if eos else None
    return eos


class _TextEpoch(TrainerCallback):
    """Sets `state.epoch` after every optimizer step to the text consumed (TSTTrainer.epoch_at),
    where the Trainer would put steps / max_steps (its rows are an endless stream to it). Logs,
    checkpoints' trainer_state.json and later callbacks all see it."""

    def __init__(self, trainer: TSTTrainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        state.epoch = self.trainer.epoch_at(state.global_step)


def _check_arguments(args, tst: TSTSpec, kwargs: dict, processing_class, train: tuple, evaluation: tuple):
    """TSTTrainer's arguments, or a UserError (a DataError for the data) saying what to change;
    returns the tokenizer (processing_class, or transformers < 4.46's tokenizer= taken out of kwargs).
    train, evaluation: the (..._tokens, ..._dataset) pairs, at most one of each given."""
    if args is None or args.max_steps is None or args.max_steps <= 0:
        raise UserError("TSTTrainer needs TrainingArguments(max_steps=N): phase 1 is a fraction of the steps")
    if args.dataloader_num_workers:
        raise UserError("TSTTrainer reads its token rows in the main process: set dataloader_num_workers=0")
    if not isinstance(tst, TSTSpec):
        raise UserError(f"tst= takes a TSTSpec (from superpose.core.tst_spec import TSTSpec), got "
                        f"{type(tst).__name__}")
    problems = tst.problems()  # the same checks, and messages, as superpose's own config
    if problems:
        raise UserError("; ".join(problems))
    if kwargs.get("data_collator") is not None:
        raise UserError("TSTTrainer packs its own rows and collates them itself; do not pass data_collator")
    if "tokenizer" in kwargs:  # the name transformers < 4.46 used for processing_class
        if processing_class is not None:
            raise DataError("both tokenizer= and processing_class= given; pass the tokenizer once, as "
                            "processing_class=")
        processing_class = kwargs.pop("tokenizer")
    for old, new, (a, b) in (("train_tokens", "train_dataset", train), ("eval_tokens", "eval_dataset", evaluation)):
        if a is not None and b is not None:
            raise DataError(f"both {old}= and {new}= given; pass the data once ({new}= takes a 1-D array too)")
    if train[0] is None and train[1] is None:
        raise DataError("TSTTrainer needs training data: pass train_dataset= (a datasets.Dataset, a list of "
                        "token-id lists, or a 1-D array of ids)")
    return processing_class


class TSTTrainer(Trainer):
    """`transformers.Trainer` with Token Superposition Training.

        trainer = TSTTrainer(model=model, args=TrainingArguments(max_steps=1000, ...),
                             train_dataset=ds, eval_dataset=held_out, processing_class=tokenizer,
                             seq_len=512, tst=TSTSpec(bag_size=4, ratio=0.3))
        trainer.train()

    tst: the TST settings (core/tst_spec.py; default TSTSpec()). The first round(ratio *
    max_steps) optimizer steps are phase 1 (the stages of tst.schedule, if given): each row holds
    bag_size*seq_len + 1 tokens and the loss is `superposition_loss`. After that, rows hold
    seq_len + 1 tokens and the loss is `next_token_loss`. The optimizer, the LR scheduler (over
    all max_steps) and the position in the text carry across the switch: phase 2 reads on where
    phase 1 stopped. Evaluation is next-token loss on rows of seq_len + 1, in both phases.

    train_dataset / eval_dataset: a `datasets.Dataset` with a column of token-id lists
    (`input_ids`, or `dataset_column=`) or a text column (`text`) that `processing_class` (a
    tokenizer) tokenizes; a list of documents (id lists, or texts with a tokenizer); a 1-D array
    or tensor of ids; or `superpose.data.open_dataset(path)` (its train / val split) or its
    `.train`. Documents are joined with the eos token (the tokenizer's, else the model config's)
    and cut into rows. Training rows follow superpose's own loader: the documents in a new
    permutation every epoch, seeded by `args.data_seed` (else `args.seed`), a pure function of
    (seed, row), so `train(resume_from_checkpoint=...)` continues with the same rows. The logged
    `epoch` is the text consumed over the text available (`epoch_at`). Evaluation rows are the
    eval data in order.

    train_tokens / eval_tokens (the older form): one 1-D stream of ids read in its own order,
    from token 0, unshuffled. Logs carry `bag_size`. Wrong data is one `DataError` line (a
    ValueError and a TypeError).
    """

    # compute_loss returns a per-micro-batch mean: the Trainer divides it by the accumulation steps
    # (every micro-batch of a phase has the same number of targets, so that is the exact mean).
    loss_is_scaled_for_ga = False

    def __init__(self, model=None, args=None, *, train_dataset=None, eval_dataset=None, seq_len: int,
                 tst: TSTSpec | None = None, processing_class=None, dataset_column: str | None = None,
                 train_tokens=None, eval_tokens=None, bag_weights: Tensor | dict | None = None, **kwargs):
        tst = TSTSpec() if tst is None else tst
        processing_class = _check_arguments(args, tst, kwargs, processing_class, (train_tokens, train_dataset),
                                            (eval_tokens, eval_dataset))
        self.schedule = Schedule(tuple(tst.phases(args.max_steps)))  # the LR stays the Trainer's
        self.tst, self.seq_len = tst, seq_len
        self.bag_weights = tst.weights if bag_weights is None else bag_weights
        for phase in self.schedule.phases:  # NaN, negative or all-zero weights: refused now, not NaN weights later
            if phase.target_bag > 1:
                try:
                    bag_weights_of(phase_weights(self.bag_weights, phase.target_bag), phase.target_bag)
                except ValueError as e:
                    raise ValueError(f"bag_weights: {e}") from None
        self._switched = False
        self.rows_per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
        stages = [(p.num_steps * self.rows_per_step, p.input_bag) for p in self.schedule.phases if p.index == 1]

        vocab = _input_embeddings(model).num_embeddings  # ids must index the model's embedding
        seed = args.data_seed if args.data_seed is not None else args.seed
        source = dict(tokenizer=processing_class, column=dataset_column, eos=eos_token_id(processing_class, model),
                      vocab_size=vocab)
        if train_tokens is not None:
            train = TokenRows(train_tokens, seq_len, stages=stages, vocab_size=vocab, what="train_tokens")
        else:
            stream, starts = token_source(train_dataset, what="train_dataset", **source)
            train = ShuffledRows(stream, seq_len, seed=seed, doc_starts=starts, stages=stages, vocab_size=vocab)
        evaluation = None
        if eval_tokens is not None:
            evaluation = TokenRows(eval_tokens, seq_len, repeat=False, vocab_size=vocab, what="eval_tokens")
        elif eval_dataset is not None:
            stream, _ = token_source(eval_dataset, what="eval_dataset", split="val", **source)
            evaluation = TokenRows(stream, seq_len, repeat=False, vocab_size=vocab, what="eval_dataset")
        super().__init__(model=model, args=args, train_dataset=train, eval_dataset=evaluation,
                         data_collator=collate_rows, processing_class=processing_class, **kwargs)
        self.add_callback(_TextEpoch(self))
        self.model_accepts_loss_kwargs = False  # transformers 4.x: divide by the accumulation steps

    def epoch_at(self, step: int) -> float:
        """Epochs of training text consumed by the first `step` optimizer steps: whole passes plus
        the position in the current one over the tokens available (phase-1 rows count s*L tokens)."""
        return self.train_dataset.epoch_at(step * self.rows_per_step)

    @property
    def switch_step(self) -> int:
        return self.schedule.switch_step

    def bag_size_at(self, step: int) -> int:
        """s of optimizer step `step` (0-based): bag_size in phase 1 (its stage's, in a curriculum), 1 after."""
        return self.phase_at(step).bag_size

    def phase_at(self, step: int):
        return self.schedule.phase(min(step, self.schedule.total_steps - 1))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        rows = inputs["input_ids"]  # (b, T + 1)
        step = self.state.global_step
        if model.training and step == self.switch_step > 0 and not self._switched:
            self._at_switch(model)
        phase = self.phase_at(step)
        T = phase.row_tokens(self.seq_len) if model.training else self.seq_len
        assert rows.shape[1] == T + 1, f"step {step} expects rows of {T + 1} tokens, got {rows.shape[1]}"
        if phase.bag_size > 1 and model.training:
            weights = phase_weights(self.bag_weights, phase.target_bag)  # a fit: the weights of this bag size
            loss = superposition_loss(model, rows, phase.bag_size, weights, mode=phase.mode,
                                      loss=self.tst.phase_loss(phase))
        else:
            loss = next_token_loss(model, rows)
        return (loss, None) if return_outputs else loss

    def _at_switch(self, model) -> list[str]:
        """reset_optimizer / reinit (`tst_step.switch`, as superpose's own trainer), once, before the
        first next-token step's first micro-batch (a Trainer resumed from a later checkpoint has
        them in its state already). Re-drawn weights are N(0, config.initializer_range), what
        transformers' `_init_weights` gives embeddings and linear layers."""
        self._switched = True
        model = getattr(model, "module", model)

        def redraw(parts: tuple[str, ...], gen: torch.Generator) -> dict:
            std = getattr(model.config.get_text_config(), "initializer_range", 0.02) or 0.02
            modules = {"input": model.get_input_embeddings(), "output": model.get_output_embeddings()}
            with torch.no_grad():
                for part in parts:
                    modules[part].weight.copy_(torch.randn(modules[part].weight.shape, generator=gen) * std)
            return {f"{part} embeddings": modules[part].weight for part in parts}

        inner = getattr(self.optimizer, "optimizer", self.optimizer)  # accelerate wraps the torch optimizer
        return switch(inner, redraw, self.tst.reinit, self.tst.reset_optimizer, self.args.seed, self.state.global_step)

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
