"""TSTTrainer: torchtitan's Trainer with Token Superposition Training, phase 1 then phase 2 in one run.

    step k (torchtitan counts 1..T)    phase = superpose's Schedule.phase(k - 1)
    phase 1 (bags of s, mode full):
        loader batches of (b, L) tokens, s of them in stream order    (s*b, L)
            -> regrouped into b contiguous rows of s*L tokens          (b, s*L)
        labels (b, s*L) -> bag_targets                                  (b, L, s)
        tok_embeddings(tokens) (b, s*L, D) -> forward hook: superpose_embeddings -> (b, L, D)
        unchanged decoder, RoPE positions 0..L-1 -> hidden (b, L, D)
        MultiHotLoss (chunked by ChunkedLossWrapper) / global weighted target count
    phase 2: torchtitan's own step, the same loss reducing to F.cross_entropy

Why regroup loader batches: torchtitan's dataloader yields rows of a fixed `training.seq_len`
and cannot change it mid-run. Its text dataset packs one continuous token stream per data-parallel
rank (and per loader worker), so s consecutive rows of L tokens are one row of s*L tokens. With
`--dataloader.num_workers` > 0 the workers' batches alternate, each from its own stream, so a
row of s*L tokens must come from one loader batch: the local batch size must then be a multiple
of s (refused in one line otherwise). Drawing s loader batches per
phase-1 micro-batch and reshaping gives superpose's phase-1 rows exactly, keeps b rows per
micro-batch (so the optimizer sees the same number of rows per step in both phases, as in
superpose), and leaves the loader's state alone: the data position carries across the switch
and DCP resumes it on either side, because the regrouping holds nothing between steps (a step
draws all its micro-batches inside `train_step`).

The switch carries everything: the model, the optimizer, the LR scheduler (a function of the
step) and the loader are torchtitan's, built once; only the phase looked up per step changes.

Refused with a one-line error: context parallelism (it splits each row's positions across ranks
after the loader, with a load-balancing permutation, while phase 1's bags and next-bag targets
must stay whole and aligned), tensor parallelism (the embedding's output and the logits become
DTensors that the bag mean and the multi-hot loss do not take), pipeline parallelism (untested:
the first stage would bag and the last score, with per-phase microbatch shapes).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torchtitan.components.loss import ChunkedLossWrapper
from torchtitan.distributed import utils as dist_utils
from torchtitan.models.common.attention import ScaledDotProductAttention
from torchtitan.tools.logging import logger
from torchtitan.trainer import Trainer

from ..core.losses import MCE
from ..core.schedule import Phase, lookup
from ..core.superposition import bag_targets, count_valid_targets, superpose_embeddings
from ..core.tst_spec import TSTSpec
from ..core.tst_step import phase_weights
from ..errors import UserError
from ..files import make_dir, write_text
from .compat import ensure_torch_api, gloo_sum_reductions
from .data import SuperposeDataLoader, resolve_data_dir
from .loss import MultiHotLoss


def _problems(cfg: TSTTrainer.Config) -> list[str]:
    """Every reason this TST run cannot go, as one-line messages: the spec's own checks
    (`TSTSpec.problems`, superpose's), then what torchtitan cannot do."""
    t, p = cfg.tst, cfg.parallelism
    out = t.problems()
    if t.weights == "mi":
        out.append("tst.weights=mi is not offered in torchtitan: its weights come from a corpus fit that superpose's "
                   "prepare makes; use uniform, power or exp")
    out += [f"tst.{name}={value} is not offered in torchtitan (the switch there carries everything); drop it or "
            "train with superpose or the Hugging Face TSTTrainer"
            for name, value, off in (("reset_optimizer", t.reset_optimizer, False), ("reinit", t.reinit, "none"))
            if value != off]
    workers, b = getattr(cfg.dataloader, "num_workers", 0), cfg.training.local_batch_size
    if workers > 0 and not out:
        bags = sorted({p.input_bag for p in t.phases(cfg.training.steps) if p.input_bag > 1 and b % p.input_bag})
        if bags:
            out.append(f"--dataloader.num_workers {workers} with training.local_batch_size {b}, not a multiple of the "
                       f"bag size {', '.join(map(str, bags))}: each worker streams its own documents, so a phase-1 row "
                       "of s*L tokens would join loader rows of different workers; set --dataloader.num_workers 0 or "
                       "a local batch size that is a multiple of s")
    inner = cfg.loss.loss_fn if isinstance(cfg.loss, ChunkedLossWrapper.Config) else cfg.loss
    if not isinstance(inner, MultiHotLoss.Config):
        out.append(f"loss must be superpose.titan.loss.MultiHotLoss (optionally inside ChunkedLossWrapper), got "
                   f"{type(inner).__qualname__}: phase 1's next-bag targets need the multi-hot loss")
    if not cfg.training.disable_cuda_graphs:
        out.append("TST needs --training.disable_cuda_graphs: a CUDA graph replays one input shape, and phase 1's "
                   "rows are s times longer than phase 2's")
    if p.context_parallel_degree > 1:
        out.append("context parallelism is refused under TST: it splits each row's positions across ranks, while "
                   "phase 1's bags of s tokens and their next-bag targets must stay whole; use FSDP/HSDP (and EP)")
    if p.tensor_parallel_degree > 1:
        out.append("tensor parallelism is refused under TST: the bag mean and the multi-hot loss take plain tensors, "
                   "not TP's DTensor activations and loss-parallel logits; use FSDP/HSDP (and EP)")
    if p.pipeline_parallel_degree > 1:
        out.append("pipeline parallelism is refused under TST (untested: phase 1 changes every stage's microbatch "
                   "shape); use FSDP/HSDP (and EP)")
    return out


def use_data_dir(config: TSTTrainer.Config) -> None:
    """A run reading a superpose data directory: resolve it (the default corpus is built on first
    use), take its tokenizer unless hf_assets_path names one, and check the model's vocabulary."""
    model_vocab = config.model_spec.superpose_model.vocab_size
    path = resolve_data_dir(config.dataloader.path, model_vocab)
    data_vocab = json.loads((path / "meta.json").read_text())["vocab_size"]
    if data_vocab > model_vocab:
        raise UserError(f"{path} has a {data_vocab}-token vocabulary but the model embeds {model_vocab}; use a data "
                        f"directory prepared with --vocab-size {model_vocab} or less, or a config with a larger vocab")
    config.dataloader.path = str(path)
    if not config.hf_assets_path:
        config.hf_assets_path = str(path)


PLAN = "superpose_tst.json"  # in the checkpoint folder: the run's TST plan and model shape, read by export
PLAN_FORMAT = 1


def switch_step(phases: list[Phase], steps: int) -> int:
    """The last phase-1 step in torchtitan's 1-based count (0 without TST): checkpoint step-N at or
    before it holds a bag predictor."""
    return next((p.start for p in phases if p.bag_size == 1), steps)


class TSTTrainer(Trainer):
    """torchtitan's Trainer, with TST's phase 1 before its ordinary next-token training."""

    @dataclass(kw_only=True, slots=True)
    class Config(Trainer.Config):
        tst: TSTSpec = field(default_factory=TSTSpec)
        """Token Superposition Training, as `--tst.<field>` (superpose's `TSTSpec`: the same
        fields, defaults and checks as `superpose train --tst.<field>`)."""

        def __post_init__(self):
            Trainer.Config.__post_init__(self)
            problems = _problems(self)
            if problems:
                raise UserError("; ".join(problems))
            # One source of truth: the loss reads the bag weights and kind from the tst section.
            inner = self.loss.loss_fn if isinstance(self.loss, ChunkedLossWrapper.Config) else self.loss
            inner.weights, inner.loss = self.tst.weights, self.tst.loss

    config: Config

    def __init__(self, config: Config):
        ensure_torch_api()
        if isinstance(config.dataloader, SuperposeDataLoader.Config):
            use_data_dir(config)
        super().__init__(config)
        self.phases = config.tst.phases(config.training.steps)
        if self.device.type == "cpu":
            for part in self.model_parts:
                gloo_sum_reductions(part)
        self._input_bag = 1  # bag size the embedding hook applies; > 1 only inside a phase-1 forward
        self._maskless = any(config.model_spec.model.traverse(ScaledDotProductAttention.Config))
        self._count = (0, torch.zeros((), dtype=torch.float32))  # (step, this rank's weighted target count)
        self._raw_tokens = 0  # raw tokens one micro-batch of the current step reads
        self._raw_since_log = 0  # raw tokens read since the last metrics log
        self.model_parts[0].tok_embeddings.register_forward_hook(self._bag_hook)
        # torchtitan's tps (and MFU = FLOPs per token x tps) counts positions here, so it does not
        # jump at the switch; raw tokens (s per position in phase 1) are logged beside it.
        self._titan_log = self.metrics_processor.log
        self.metrics_processor.log = self._log
        switch = switch_step(self.phases, config.training.steps)
        self.write_plan(switch)
        logger.info("TST: " + ", ".join(f"{p.name} steps {p.start + 1}-{p.end} (s={p.bag_size})" for p in self.phases)
                    + f"; the switch to next-token training is at step {switch + 1}")

    def write_plan(self, switch: int) -> None:
        """Record the run's TST plan and model shape in the checkpoint folder (rank 0), so export
        knows which checkpoints are phase-1 bag predictors whatever the command line changed."""
        c = self.config
        folder = f"{c.dump_folder}/{c.checkpoint.folder}"
        if not c.checkpoint.enable or "://" in folder or (torch.distributed.is_initialized()
                                                          and torch.distributed.get_rank() != 0):
            return
        plan = {"format": PLAN_FORMAT, "steps": c.training.steps, "switch_step": switch,
                "phases": [{"name": p.name, "start": p.start, "end": p.end, "bag_size": p.bag_size,
                            "mode": p.mode} for p in self.phases],
                "tst": dataclasses.asdict(c.tst),
                "hf_assets_path": str(Path(c.hf_assets_path).resolve()),
                "model": dataclasses.asdict(c.model_spec.superpose_model)}
        make_dir(Path(folder), "checkpoint folder")
        write_text(Path(folder) / PLAN, json.dumps(plan, indent=1) + "\n")

    def _log(self, step: int, *args, extra_metrics: dict[str, Any] | None = None, **kwargs) -> None:
        """torchtitan's metrics log plus the phase, its bag size and raw tokens/s (TensorBoard, W&B and the log)."""
        mp = self.metrics_processor
        seconds = (time.perf_counter() - mp.time_last_log) * mp.parallel_dims.non_data_parallel_size
        phase = self.phase(step)
        raw_tps = self._raw_since_log / max(seconds, 1e-9)
        loading = 100 * sum(mp.data_loading_times) * mp.parallel_dims.non_data_parallel_size / max(seconds, 1e-9)
        self._raw_since_log = 0
        extra = {**(extra_metrics or {}), "tst/phase": phase.index, "tst/bag_size": phase.bag_size,
                 "throughput(raw_tps)": raw_tps}
        self._titan_log(step, *args, extra_metrics=extra, **kwargs)
        logger.info(f"TST step {step:2}: {phase.name} (s={phase.bag_size})  tps counts positions; raw tokens/s: "
                    f"{round(raw_tps):,}  data loading: {loading:.1f}% of the time")

    def phase(self, step: int | None = None) -> Phase:
        """The phase of torchtitan's 1-based `step` (default: the current one)."""
        return lookup(self.phases, (self.step if step is None else step) - 1)

    def _bag_hook(self, module: torch.nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor | None:
        # (b, s*L, D) token embeddings -> (b, L, D) bag means, accumulated in float32 (superpose's function)
        return superpose_embeddings(out, self._input_bag) if self._input_bag > 1 else None

    def _weights(self, phase: Phase) -> str:
        return phase_weights(self.config.tst.weights, phase.target_bag)

    def _loss_kind(self, phase: Phase) -> str:
        return self.config.tst.phase_loss(phase)

    def tst_batch(self, batches: list[tuple[dict[str, torch.Tensor], torch.Tensor]], phase: Phase
                  ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """One micro-batch of `phase` from `phase.input_bag` consecutive loader batches of (b, L).

        -> inputs {"input": (b, input_bag * L)[, "positions": (b, L)]}, labels (b, L) or the
        phase's targets (b, L, target_bag) from superpose's `bag_targets`.
        """
        s_in = phase.input_bag
        b, L = batches[0][1].shape
        tokens = torch.cat([d["input"] for d, _ in batches]).reshape(b, s_in * L)  # rows i*s..i*s+s-1 of (s*b, L)
        labels = torch.cat([y for _, y in batches]).reshape(b, s_in * L)
        inputs: dict[str, torch.Tensor] = {"input": tokens}
        if not self._maskless and "positions" in batches[0][0]:
            # per-document positions are the loader's; a row of bags is one causal block 0..L-1
            inputs["positions"] = (batches[0][0]["positions"] if s_in == 1 and phase.bag_size == 1
                                   else torch.arange(L).expand(b, L).contiguous())
        if phase.bag_size > 1:
            labels = bag_targets(labels, phase.bag_size, phase.mode)  # (b, L, s) or (b, L, 1)
        return inputs, labels

    def batch_generator(self, data_iterable: Iterable[tuple[dict[str, torch.Tensor], torch.Tensor]]
                        ) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        """torchtitan's generator, drawing `input_bag` loader batches per micro-batch in phase 1."""
        data_iterator = iter(data_iterable)
        while True:
            phase = self.phase()
            t0 = time.perf_counter()
            try:
                batches = [next(data_iterator) for _ in range(phase.input_bag)]
            except StopIteration as ex:
                from torchtitan.components.dataloader import DataloaderExhaustedError

                raise DataloaderExhaustedError() from ex
            inputs, labels = self.tst_batch(batches, phase)
            self._raw_tokens = inputs["input"].numel()
            if self._count[0] != self.step:
                self._count = (self.step, torch.zeros((), dtype=torch.float32))
            targets = labels if labels.dim() == 3 else labels.unsqueeze(-1)
            self._count[1].add_(count_valid_targets(targets, self._weights(phase), loss=self._loss_kind(phase)))
            self.metrics_processor.ntokens_since_last_log += labels.shape[0] * labels.shape[1]  # positions
            self._raw_since_log += self._raw_tokens
            self.metrics_processor.data_loading_times.append(time.perf_counter() - t0)
            yield inputs, labels

    def post_dataloading_process(self, input_dict: dict[str, torch.Tensor], labels: torch.Tensor
                                 ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        before = self.ntokens_seen
        inputs, labels, extra = super().post_dataloading_process(input_dict, labels)
        self.ntokens_seen = before + self._raw_tokens  # raw tokens read, not target slots
        return inputs, labels, extra

    def forward_backward_step(self, *, input_dict, labels, global_valid_tokens: torch.Tensor) -> torch.Tensor:
        phase = self.phase()
        if self._weights(phase) != "uniform" or self._loss_kind(phase) != MCE.name:
            # torchtitan counts labels != ignore; the weighted (or per-position, MCEAlt) count is
            # superpose's count_valid_targets, summed over the step's micro-batches and the ranks
            local = self._count[1].to(self.device)
            global_valid_tokens = (dist_utils.dist_sum_tensor(local, self.parallel_dims.get_mesh("batch"))
                                   if self.parallel_dims.dp_enabled else local)
        self._input_bag = phase.input_bag
        try:
            return super().forward_backward_step(input_dict=input_dict, labels=labels,
                                                 global_valid_tokens=global_valid_tokens)
        finally:
            self._input_bag = 1

    def train_step(self, data_iterator):
        phase, previous = self.phase(), self.phase(self.step - 1) if self.step > 1 else None
        if previous is not None and previous != phase:
            logger.info(f"TST: step {self.step} switches from {previous.name} (s={previous.bag_size}) to "
                        f"{phase.name} (s={phase.bag_size}); parameters, optimizer, LR schedule and data carry on")
        return super().train_step(data_iterator)
