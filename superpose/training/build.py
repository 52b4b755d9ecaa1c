"""Build a run once, then hand it to the loop.

    run_training(cfg, run_dir)        what `superpose train` runs: join the process group (once),
                                      resolve the data, build, start or resume, train, leave
    build_trainer(cfg, run_dir, ...)  process group, vocabulary, model, optimizer, schedule, loader,
                                      evaluation windows -> a `Trainer` that only steps

Nothing here steps or writes the run directory (the `Trainer` does; `checkpoint` persists it),
and the caller's config is never changed: the trainer gets a copy with the vocabulary resolved.
"""

from __future__ import annotations

import contextlib
import copy
import os
from pathlib import Path
from collections.abc import Callable

import torch

from ..config import Config
from ..core.arch import ModelConfig
from ..core.llama import Transformer
from ..core.model import build_model, empty_model
from ..core.schedule import Schedule
from ..data import DataSource, Dataset, open_dataset, open_mixture, token_byte_lengths, val_windows
from ..data.mixture import absolute_mix
from ..data.tokenizer import load_tokenizer_file
from ..checks import check_model_memory, count_params
from ..errors import UserError, command
from .. import checkpoint
from . import distributed, tracking
from .metrics import quiet
from .optimizer import configure_optimizer
from .ownership import RUN_MARK, check_train_dir, claim
from .perf import attention_kernel, auto_loss_chunk_rows
from .state import rng_state
from .resume import check_resumable, newest_unfinished
from ..core.tst_step import model_loss
from .trainer import Trainer


def resolve_device(name: str) -> torch.device:
    from ..checks import device

    return device(name, "--train.device")


def resolve_data(cfg: Config, log: Callable[[str], None] = print,
                 par: distributed.Parallel | None = None) -> DataSource:
    """The run's data: the mixture of data.mix, or data.path's directory (raw text there is
    prepared once into the cache: data/own_text.py), or the default corpus (prepared on first use
    when both are empty). Under torchrun rank 0 of each machine goes first
    while the others wait, so no two processes build the corpus at once."""
    from ..data.default_corpus import cache_dir, ensure_default_corpus
    from ..data.own_text import data_directory

    if cfg.data.mix:  # prepared directories only: nothing to build, nothing to wait for
        return open_mixture(cfg.data.mix)
    waits = par is not None and par.distributed and par.local_rank != 0
    if waits:
        par.barrier()
    ds = open_dataset(data_directory(cfg.data.path, cache_dir() / "data", log) if cfg.data.path
                      else ensure_default_corpus(cfg.data.vocab_size, log))
    if par is not None and par.distributed and not waits:
        par.barrier()
    return ds


def resolve_from_data(cfg: Config, dataset: DataSource) -> Config:
    """A copy of `cfg` with what the opened data decides: model.vocab_size 0 ("from the data")
    becomes the tokenizer's size, and data.path / data.mix name their directories absolutely."""
    if 0 < cfg.model.vocab_size < dataset.vocab_size:
        raise UserError(f"model.vocab_size={cfg.model.vocab_size} is smaller than the tokenizer's "
                        f"{dataset.vocab_size} tokens in {dataset.path}; set --model.vocab_size=0 (= from data)")
    cfg = copy.deepcopy(cfg)
    cfg.model.vocab_size = cfg.model.vocab_size or dataset.vocab_size
    if cfg.data.path:  # the directory (raw text's prepared copy), absolute: the run resumes and evaluates from anywhere
        cfg.data.path = str(Path(dataset.path).absolute())
    if cfg.data.mix:
        cfg.data.mix = absolute_mix(cfg.data.mix)
    return cfg


def build_trainer(cfg: Config, run_dir: Path, dataset: DataSource | None = None,
                  log: Callable[[str], None] = print, *, par: distributed.Parallel | None = None,
                  init_from_hf: Path | None = None, state: dict | None = None) -> Trainer:
    """Everything a run needs, built once.

    dataset: the opened data directory or mixture (resolved from cfg.data when None).
    par: the process group the caller joined (`run_training`); None joins it here.
    init_from_hf: a Hugging Face Llama folder whose weights start the run (cfg.model must be its
    architecture: see `interop.hf_llama.config_from_hf`).
    state: a `Trainer.state_dict()` to continue from (compare's decay branches): the model is then
    built without initialisation, since the state's weights replace it.
    """
    tr, d = cfg.train, cfg.data
    tracking.check(cfg.log)  # a missing tracker library, said before anything is built or written
    # Under torchrun: join the job (rank, world size, cuda:LOCAL_RANK); otherwise one process.
    if par is None:
        par = distributed.setup(cfg.parallel.mode, resolve_device(tr.device), cfg.parallel.timeout_s,
                                cfg.parallel.mixed_precision)
    device = par.device
    if not par.is_main:  # only rank 0 talks
        log = quiet
    for note in par.notes:
        log(note)
    check_batch_split(tr.batch_size, tr.grad_accum, par)
    if dataset is None:
        dataset = resolve_data(cfg, log, par)
    if init_from_hf is not None:
        from ..interop.hf_llama import check_hf_tokenizer

        check_hf_tokenizer(init_from_hf, dataset)
    cfg = resolve_from_data(cfg, dataset)
    check_model_memory(count_params(cfg.model.resolve()), device, training=True, what="the model",
                       shards=par.world_size if cfg.parallel.mode == "fsdp" else 1,
                       fix="lower --model.dim / --model.n_layers, or train on a device with more memory")
    model, rng = initial_model(cfg, device, state is not None, init_from_hf, log)
    # train.compile: model, bag superposition and loss compiled as one function (one graph per
    # phase, since bag_size and the row length are baked in; dynamic=False keeps it that way).
    loss_fn = torch.compile(model_loss, dynamic=False) if tr.compile else model_loss
    attention_kernel(tr.attention, device)  # refuses a kernel this device lacks, now
    # Data parallel: the module a step calls (FSDP2 shards `model`'s parameters in place, so the
    # optimizer is built after it).
    fwd = distributed.wrap(model, par, loss_fn, cfg.parallel.mixed_precision) if par.distributed else None
    tokenizer = load_tokenizer_file(dataset.tokenizer_path)
    trainer = Trainer(
        cfg=cfg, run_dir=Path(run_dir), dataset=dataset, log=log, par=par, model=model, rng=rng,
        optimizer=configure_optimizer(model, cfg), schedule=cfg.build_schedule(),
        loader=dataset.loader(tr.seed, cfg.model.vocab_size),
        loss_fn=loss_fn, loss_chunk_rows=loss_chunk_rows(cfg, par), fwd=fwd,
        val=torch.from_numpy(val_windows(dataset, d.seq_len, d.val_tokens, cfg.model.vocab_size)),  # (N, L + 1)
        token_bytes=torch.from_numpy(token_byte_lengths(tokenizer, cfg.model.vocab_size)))  # (V,)
    if cfg.tst.weights == "mi":
        trainer.mi_fit = mi_fit(trainer.schedule, dataset, Path(run_dir), log)
    if state is not None:
        trainer.load_state_dict(state)
    return trainer


def initial_model(cfg: Config, device: torch.device, from_state: bool, init_from_hf: Path | None,
                  log: Callable[[str], None]) -> tuple[Transformer, dict]:
    """The model a run starts from, and its RNG state: drawn from train.seed (`seeded_model`), or
    left uninitialised when a state's weights and RNG replace it (from_state); then a Hugging
    Face Llama's weights when init_from_hf names one (cfg.model is its architecture)."""
    if from_state:
        model, rng = empty_model(cfg.model, device), {}
    else:
        model, rng = seeded_model(cfg.model, device, cfg.train.seed)
    if init_from_hf is not None:
        from ..interop.hf_llama import init_from_hf as load_hf_weights

        load_hf_weights(model, init_from_hf)
        log(f"model: weights from the Hugging Face folder {init_from_hf}")
    return model, rng


def check_batch_split(batch_size: int, grad_accum: int, par: distributed.Parallel) -> None:
    """Data parallel: each process takes batch_size / W rows of a step in grad_accum micro-batches,
    so the global batch must divide evenly; else one line with the nearest size that does."""
    W, K = par.world_size, grad_accum
    if par.distributed and batch_size % (W * K):
        near = W * K * max(1, round(batch_size / (W * K)))
        raise UserError(f"train.batch_size={batch_size} (the global batch) must be divisible by the {W} "
                        f"processes x train.grad_accum={K}: each process takes batch_size/{W} rows in {K} "
                        f"micro-batches; use a multiple of {W * K}, e.g. --train.batch_size={near}")


def loss_chunk_rows(cfg: Config, par: distributed.Parallel) -> int:
    """train.loss_chunk_rows, with -1 (auto) decided once from a micro-batch's positions (either
    phase has L of them), the vocabulary and the device."""
    tr = cfg.train
    if tr.loss_chunk_rows >= 0:
        return tr.loss_chunk_rows
    micro_positions = tr.batch_size // (tr.grad_accum * par.world_size) * cfg.data.seq_len
    return auto_loss_chunk_rows(micro_positions, cfg.model.vocab_size, cfg.model.dim, par.device)


def seeded_model(cfg: ModelConfig, device: torch.device, seed: int) -> tuple[Transformer, dict]:
    """The run's initial weights, drawn from torch's generators seeded with train.seed inside a
    fork of them: the same seed gives the same weights in every arm, and building leaves the
    process's generators as it found them (compare builds several trainers in one process, and one
    must not move another's stream). Returns the model and the generator states after the draw:
    the run's own RNG state, which its checkpoints keep (rng.pt)."""
    devices = list(range(torch.cuda.device_count())) if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        return build_model(cfg, device), rng_state(device)


def mi_fit(schedule: Schedule, dataset: Dataset, run_dir: Path, log: Callable[[str], None]) -> dict:
    """tst.weights=mi: the mutual-information fit the run weighs its bags with. A run keeps its own
    copy (RUN_DIR/mi.json, written by `Trainer.begin`), so a resume uses the same weights whatever
    the data directory holds by then; a new run takes the data directory's, or measures it."""
    from ..core.superposition import mi_bag_weights
    from ..data import mutual_info

    record = mutual_info.load(run_dir) or mutual_info.load(dataset.path)
    if record is None:
        log(f"mi: {dataset.path} has no {mutual_info.FILE} (prepared before superpose measured it); measuring now "
            f"(store it with: {command('superpose', 'mi', '--data', dataset.path)})")
        record = mutual_info.measure(dataset, log=log)
    for phase in schedule.phases:
        try:
            mi_bag_weights(record["fit"], phase.target_bag)
        except ValueError as e:
            raise UserError(f"tst.weights=mi: {e}") from None
    return record


def run_training(cfg: Config, run_dir: Path, log: Callable[[str], None] = print, resume: bool = False,
                 init_from_hf: Path | None = None) -> dict:
    """Train a new run in `run_dir`, or (resume=True) continue it from its newest checkpoint, as
    one process or as one rank of a torchrun job (only rank 0 logs).

    resume=True: `cfg` must agree with the checkpoint's config in every field outside
    RESUME_MAY_CHANGE (`resume.resume_config` builds such a config from the checkpoint itself).
    A rank that fails leaves the process group without teardown, so it exits at once and
    torchrun ends the other ranks.
    """
    run_dir = Path(run_dir)
    tracking.check(cfg.log)  # before the run directory is created or locked
    check_train_dir(run_dir, resume)  # not an exported model, a data directory or an experiment's arm
    par = distributed.setup(cfg.parallel.mode, resolve_device(cfg.train.device), cfg.parallel.timeout_s,
                            cfg.parallel.mixed_precision)
    log = log if par.is_main else quiet
    # One writer per run directory: rank 0 holds an OS lock for the whole run (the kernel drops it
    # when the process dies, so a kill -9 leaves nothing stale). A second `train --out` or
    # `--resume` of this directory is refused naming our pid: a requeued job whose old instance
    # still runs must not interleave metrics or prune checkpoints under the other.
    # A run refused before it wrote anything (no data, a bad setting) leaves no folder or lock behind.
    with claim(run_dir, "run", mine=(RUN_MARK,)) if par.is_main else contextlib.nullcontext():
        if resume:
            ckpt = newest_unfinished(run_dir)
        else:
            restart_if_nothing_saved(run_dir, log)
        dataset = resolve_data(cfg, log, par)
        if resume:
            check_resumable(ckpt, run_dir, cfg, dataset)  # before the build, which checks the vocabulary too
        trainer = build_trainer(cfg, run_dir, dataset, log, par=par, init_from_hf=init_from_hf)
        if resume:
            trainer.resume_from(ckpt)
        summary = trainer.train()
    distributed.shutdown(par)
    return summary


def restart_if_nothing_saved(run_dir: Path, log: Callable[[str], None]) -> None:
    """Let `train --out RUN` start again in a directory whose run stopped before it saved anything
    (a NaN at step 1, a kill with checkpoint.every=0): there is nothing to resume there, so
    refusing would leave the user at a dead end. Its log is kept as metrics.jsonl.failed-N."""
    metrics = run_dir / "metrics.jsonl"
    if not metrics.exists():
        return
    has_checkpoints = bool(checkpoint.checkpoints(run_dir))
    if (run_dir / "summary.json").exists() and not has_checkpoints:  # finished, nothing to continue from
        raise UserError(f"{run_dir} already holds a run, finished and without checkpoints to continue from; "
                        "choose another --out")
    if has_checkpoints:
        raise UserError(f"{run_dir} already holds a run; choose another --out, or continue it with "
                        f"{command('--resume', run_dir)}")
    n = 1
    while (run_dir / f"metrics.jsonl.failed-{n}").exists():
        n += 1
    kept = run_dir / f"metrics.jsonl.failed-{n}"
    os.replace(metrics, kept)
    log(f"{run_dir} holds a run that stopped before its first checkpoint (nothing to resume); starting it again "
        f"from step 0, its log kept as {kept.name}")
