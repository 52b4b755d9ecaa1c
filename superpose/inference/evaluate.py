"""`superpose eval`: validation loss, perplexity and bits per byte, and lm-eval downstream tasks.

    next_token_eval(forward, windows, ...)  the one evaluation loop: loss and bits per byte, given a
                                     forward and the context it runs in
    evaluate_loss(path, data=None)   next-token loss on held-out windows: by default the same windows
                                     the trainer evaluated (the run's data directory, data.seq_len,
                                     data.val_tokens), so the numbers match summary.json
    run_tasks(path, tasks)           lm-evaluation-harness through `SuperposeLM`: task yaml files,
                                     superpose_cloze (built from held-out text, offline), or lm-eval's
                                     own task names (hellaswag, arc_easy, mmlu, ...: these fetch their
                                     data from the Hugging Face hub)
"""

from __future__ import annotations

import contextlib
import logging
import math
import tempfile
from functools import partial
from pathlib import Path
from contextlib import AbstractContextManager as ContextManager
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..data import Dataset, Mixture, open_dataset, open_mixture, token_byte_lengths, val_windows
from ..data.tokenizer import load_tokenizer_file, same_tokenizer
from ..errors import UserError


def bits_per_byte(nll_sum_nats: float, num_bytes: int) -> float:
    return nll_sum_nats / math.log(2) / max(num_bytes, 1)


@torch.no_grad()
def next_token_eval(forward: Callable[[Tensor], Tensor], windows: Tensor, batch_size: int, device: torch.device,
                    token_bytes: Tensor | None = None,
                    context: Callable[[], ContextManager] = contextlib.nullcontext) -> dict:
    """Next-token loss over (N, L + 1) windows and, given token_bytes, bits per UTF-8 byte: the one
    evaluation of superpose (the trainer, `superpose eval`, compare and the Hugging Face Trainer).

    forward: input ids (b, L) on `device` -> logits (b, L, V); the model, or under FSDP the wrapped
    module that gathers the sharded weights. context: entered around every forward (autocast, the
    attention kernel: `perf.compute_context`), so a run is scored with the arithmetic it trained
    with. token_bytes: (V,) UTF-8 bytes per token id; tokens that stand for no text (end-of-text)
    are left out of bits per byte, as nanochat does. The sums stay on the device in float64 and
    are read once, at the end; the byte counts come from the targets' CPU copy.
    """
    nll_sums = torch.zeros(2, dtype=torch.float64, device=device)  # (all targets, targets that are text)
    n_targets = n_bytes = 0
    for batch in windows.split(batch_size):
        nbytes = None if token_bytes is None else token_bytes.cpu()[batch[:, 1:].flatten().cpu()]  # (b*L,)
        batch = batch.to(device)
        x, y = batch[:, :-1], batch[:, 1:]  # (b, L) each
        with context():
            logits = forward(x)  # (b, L, V)
        nll = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="none")  # (b*L,)
        n_targets += nll.numel()
        if nbytes is None:
            nll_sums[0] += nll.sum().double()
            continue
        # index_select of the text positions (ascending) sums exactly the elements, in exactly the
        # order, that nll[nbytes > 0] would, without the device waiting for the mask's count.
        text = nbytes.nonzero().squeeze(1).to(device)
        nll_sums += torch.stack([nll.sum(), nll.index_select(0, text).sum()]).double()
        n_bytes += int(nbytes.sum())
    nll_sum, nll_text = nll_sums.tolist()  # the one sync
    out = {"val_loss": nll_sum / n_targets, "val_tokens": n_targets}
    if token_bytes is not None:
        out.update(val_bpb=bits_per_byte(nll_text, n_bytes), val_bytes=n_bytes)
    return out


def open_eval_data(src, data: Path | str | None) -> Dataset | Mixture:
    """The data directory to evaluate on: `data`, else the run's own (a run on data.mix: its
    mixture, each source's share of the windows); its tokenizer must be the model's."""
    from .load import tokenizer_path

    mix = src.config.get("data", {}).get("mix") if data is None else ""
    if mix:
        ds = open_mixture(mix)  # a source gone is one line from open_dataset
    else:
        if data is None and src.data_path is None:
            raise UserError(f"{src.path} does not record its data directory (no config.json); pass --data DATA_DIR")
        if data is None and not src.data_path.is_dir():
            default = not src.config.get("data", {}).get("path")
            what = "the default corpus the run trained on is not prepared in" if default else \
                "the run's data directory is gone:"
            raise UserError(f"{what} {src.data_path}; pass --data DATA_DIR (prepared with the same tokenizer)"
                            + (" or set SUPERPOSE_CACHE to the cache the run used" if default else ""))
        ds = open_dataset(Path(data) if data is not None else src.data_path)
    model_tok = tokenizer_path(src)
    if not same_tokenizer(ds.tokenizer_path, model_tok):
        raise UserError(f"{ds.path} was tokenized with another tokenizer than the model's ({model_tok}); prepare "
                        f"it with: superpose prepare --tokenizer {model_tok} ...")
    if ds.vocab_size > src.model_config.vocab_size:
        raise UserError(f"{ds.path} has {ds.vocab_size} tokens, more than the model's {src.model_config.vocab_size}")
    return ds


def evaluate_loss(path: Path | str, data: Path | str | None = None, val_tokens: int | None = None,
                  batch_size: int | None = None, device: str = "cpu") -> dict:
    """Loss, perplexity and bits per byte of a run or checkpoint on a validation split, computed
    as the trainer computes them: with the run's train.dtype (bf16 autocast) and attention kernel,
    so a run scored on its own data gives its summary.json numbers."""
    from ..training.perf import CUDA_ONLY_ATTENTION, compute_context
    from .load import load_model, locate

    src = locate(path)
    ds = open_eval_data(src, data)
    cfg_data, cfg_train = src.config.get("data", {}), src.config.get("train", {})
    # None means "the run's own"; 0 is a mistake, said below, not the default.
    val_tokens = val_tokens if val_tokens is not None else int(cfg_data.get("val_tokens") or 1 << 16)
    batch_size = batch_size if batch_size is not None else int(cfg_train.get("batch_size") or 16)
    if val_tokens < 1 or batch_size < 1:
        raise UserError(f"--val-tokens and --batch-size must be >= 1, got {val_tokens} and {batch_size}")
    model = load_model(src, device)
    device = next(model.parameters()).device
    attention = cfg_train.get("attention", "auto")
    if device.type != "cuda" and attention in CUDA_ONLY_ATTENTION:
        attention = "auto"  # a GPU run scored on CPU: the kernel is a speed choice, the arithmetic is the same
    context = partial(compute_context, cfg_train.get("dtype", "float32"), attention, device)
    windows = torch.from_numpy(val_windows(ds, src.seq_len, val_tokens, src.model_config.vocab_size))  # (N, L + 1)
    tokenizer = load_tokenizer_file(ds.tokenizer_path)
    token_bytes = torch.from_numpy(token_byte_lengths(tokenizer, src.model_config.vocab_size))  # (V,)
    out = next_token_eval(model, windows, batch_size, device, token_bytes, context)
    return {"model": str(src.path), "step": src.step, "data": ds.spec if isinstance(ds, Mixture) else str(ds.path),
            "seq_len": src.seq_len,
            "val_loss": out["val_loss"], "val_ppl": math.exp(out["val_loss"]), "val_bpb": out["val_bpb"],
            "val_tokens": out["val_tokens"], "val_bytes": out["val_bytes"]}


# ----------------------------------------------------------------------------- lm-eval

HUB_TASKS_HINT = "hellaswag, arc_easy, arc_challenge, mmlu"


def check_task_file(path: Path) -> None:
    """Refuse, in one line, a task yaml that does not parse or names no task, before lm-eval
    (which raises from deep inside its task index) sees it. lm-eval's own tags (!function, ...)
    are accepted without being run: only the YAML itself is checked here."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
    try:
        doc = yaml.load(path.read_text(encoding="utf-8"), Loader=Loader)  # noqa: S506 (tags are ignored)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        first = " ".join(str(e).split())[:160]
        raise UserError(f"task file {path} is not valid YAML ({first}); fix it (lm-eval's task format: "
                        "task: NAME, dataset_path: ..., ...)") from None
    if not isinstance(doc, dict) or not (doc.get("task") or doc.get("group")):
        raise UserError(f"task file {path} names no task (no `task: NAME` entry); write it in lm-eval's task format")


def run_tasks(path: Path | str, tasks: list[str], data: Path | str | None = None, limit: int | None = None,
              num_fewshot: int | None = None, batch_size: int = 16, device: str = "cpu",
              log: Callable[[str], None] = print) -> dict:
    """Run lm-eval tasks on a run or checkpoint; returns {task: {metric: value}} plus lm-eval's table.

    Each entry of `tasks` is a task yaml file, a local task superpose builds from held-out text
    (superpose_cloze), or an lm-eval task or group name.
    """
    # The arguments first: importing lm-eval takes seconds.
    tasks = [t.strip() for t in tasks if t.strip()]
    if not tasks:
        raise UserError("--tasks names no task; give task yaml files or names, comma-separated, e.g. "
                        "superpose_cloze")
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be >= 1 (examples scored per task; leave it out for all), got {limit}")
    if num_fewshot is not None and num_fewshot < 0:
        raise UserError(f"--num-fewshot must be >= 0, got {num_fewshot}")
    if batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {batch_size}")
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
        from lm_eval.utils import make_table
    except ImportError as e:
        raise UserError(f"--tasks needs lm-eval ({e}); install it with: pip install 'superpose[hf]'") from None
    from ..interop.lm_eval_adapter import SuperposeLM, quiet_git
    from .load import load_model, load_tokenizer, locate
    from ..tasks import LOCAL_TASKS, build_task

    src = locate(path)
    with tempfile.TemporaryDirectory(prefix="superpose-tasks-") as tmp:
        specs, hub = [], []
        for name in tasks:
            if name.endswith((".yaml", ".yml")):
                if not Path(name).is_file():
                    raise UserError(f"task file {name} does not exist")
                check_task_file(Path(name))
                specs.append(str(Path(name).resolve()))
            elif name in LOCAL_TASKS:
                ds = open_eval_data(src, data)
                log(f"building {name} from the validation split of {ds.path}")
                specs.append(str(build_task(name, ds.path, Path(tmp) / name)))
            else:
                hub.append(name)
                specs.append(name)
        manager = TaskManager(include_defaults=bool(hub))
        unknown = [n for n in hub if n not in manager.all_tasks]
        if unknown:
            raise UserError(f"unknown task {unknown[0]!r}: give a task yaml file, one of {', '.join(LOCAL_TASKS)}, or "
                            f"an lm-eval task name ({HUB_TASKS_HINT}, ...)")
        lm = SuperposeLM(load_model(src, device), load_tokenizer(src), max_length=src.seq_len, batch_size=batch_size,
                         src=src)
        quiet_git()
        quiet = logging.getLogger("lm_eval")  # its per-task INFO and advice lines would drown the result
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            results = lm_eval.simple_evaluate(model=lm, tasks=specs, task_manager=manager, num_fewshot=num_fewshot,
                                              limit=limit, log_samples=False, bootstrap_iters=1000)
        except (ConnectionError, OSError) as e:
            if not hub:
                raise
            first = str(e).splitlines()[0] if str(e) else ""
            raise UserError(f"cannot fetch the data of {', '.join(hub)} ({type(e).__name__}: {first}); "
                            "lm-eval's own tasks download from the Hugging Face hub: run with network access "
                            "(HF_HUB_OFFLINE and HF_DATASETS_OFFLINE unset)") from None
        finally:
            quiet.setLevel(level)
    scores = {task: {k.split(",")[0]: v for k, v in metrics.items() if isinstance(v, (int, float)) and k != "alias"}
              for task, metrics in results["results"].items()}
    return {"model": str(src.path), "step": src.step, "tasks": scores, "table": make_table(results)}
