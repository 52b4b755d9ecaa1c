"""`superpose eval`: validation loss, perplexity and bits per byte, and lm-eval downstream tasks.

    evaluate_loss(path, data=None)   next-token loss on held-out windows: by default the same windows
                                     the trainer evaluated (the run's data directory, data.seq_len,
                                     data.val_tokens), so the numbers match summary.json
    run_tasks(path, tasks)           lm-evaluation-harness through `SuperposeLM`: task yaml files,
                                     superpose_cloze (built from held-out text, offline), or lm-eval's
                                     own task names (hellaswag, arc_easy, mmlu, ...: these fetch their
                                     data from the Hugging Face hub)
"""

from __future__ import annotations

import hashlib
import logging
import math
import tempfile
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..data import Dataset, open_dataset, token_byte_lengths, val_windows
from ..errors import UserError


def bits_per_byte(nll_sum_nats: float, num_bytes: int) -> float:
    return nll_sum_nats / math.log(2) / max(num_bytes, 1)


@torch.no_grad()
def loss_and_bpb(model, windows: Tensor, token_bytes: Tensor, batch_size: int) -> dict:
    """Next-token loss over (N, L + 1) windows, and bits per UTF-8 byte (tokens of no text, such
    as end-of-text, left out of the byte count). The trainer's evaluation, batch for batch."""
    device = next(model.parameters()).device
    nll_sum, n_targets, nll_bytes, n_bytes = 0.0, 0, 0.0, 0
    for batch in windows.split(batch_size):
        batch = batch.to(device)
        x, y = batch[:, :-1], batch[:, 1:]
        nll = F.cross_entropy(model(x).flatten(0, 1).float(), y.flatten(), reduction="none")  # (b*L,)
        nbytes = token_bytes.to(device)[y.flatten()]
        nll_sum += nll.sum().item()
        n_targets += nll.numel()
        nll_bytes += nll[nbytes > 0].sum().item()
        n_bytes += int(nbytes.sum().item())
    loss = nll_sum / n_targets
    return {"val_loss": loss, "val_ppl": math.exp(loss), "val_bpb": bits_per_byte(nll_bytes, n_bytes),
            "val_tokens": n_targets, "val_bytes": n_bytes}


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def open_eval_data(src, data: Path | str | None) -> Dataset:
    """The data directory to evaluate on: `data`, else the run's own; its tokenizer must be the model's."""
    from .load import tokenizer_path

    if data is None:
        if src.data_path is None:
            raise UserError(f"{src.path} does not record its data directory (no config.json); pass --data DATA_DIR")
        if not src.data_path.is_dir():
            raise UserError(f"the run's data directory {src.data_path} is gone; pass --data DATA_DIR (prepared with "
                            "the same tokenizer)")
    ds = open_dataset(Path(data) if data is not None else src.data_path)
    model_tok = tokenizer_path(src)
    if _sha256(ds.tokenizer_path) != _sha256(model_tok):
        from tokenizers import Tokenizer

        same = (Tokenizer.from_file(str(ds.tokenizer_path)).get_vocab()
                == Tokenizer.from_file(str(model_tok)).get_vocab())
        if not same:
            raise UserError(f"{ds.path} was tokenized with another tokenizer than the model's ({model_tok}); prepare "
                            f"it with: superpose prepare --tokenizer {model_tok} ...")
    if ds.vocab_size > src.model_config.vocab_size:
        raise UserError(f"{ds.path} has {ds.vocab_size} tokens, more than the model's {src.model_config.vocab_size}")
    return ds


def evaluate_loss(path: Path | str, data: Path | str | None = None, val_tokens: int | None = None,
                  batch_size: int | None = None, device: str = "cpu") -> dict:
    """Loss, perplexity and bits per byte of a run or checkpoint on a validation split."""
    from tokenizers import Tokenizer

    from .load import load_model, locate

    src = locate(path)
    ds = open_eval_data(src, data)
    cfg_data, cfg_train = src.config.get("data", {}), src.config.get("train", {})
    val_tokens = val_tokens or int(cfg_data.get("val_tokens") or 1 << 16)
    batch_size = batch_size or int(cfg_train.get("batch_size") or 16)
    if val_tokens < 1 or batch_size < 1:
        raise UserError(f"--val-tokens and --batch-size must be >= 1, got {val_tokens} and {batch_size}")
    model = load_model(src, device)
    windows = torch.from_numpy(val_windows(ds, src.seq_len, val_tokens))  # (N, L + 1)
    vocab = src.model_config.vocab_size
    token_bytes = torch.from_numpy(token_byte_lengths(Tokenizer.from_file(str(ds.tokenizer_path)), vocab))  # (V,)
    out = loss_and_bpb(model, windows, token_bytes, batch_size)
    return {"model": str(src.path), "step": src.step, "data": str(ds.path), "seq_len": src.seq_len, **out}


# ----------------------------------------------------------------------------- lm-eval

HUB_TASKS_HINT = "hellaswag, arc_easy, arc_challenge, mmlu"


def run_tasks(path: Path | str, tasks: list[str], data: Path | str | None = None, limit: int | None = None,
              num_fewshot: int | None = None, batch_size: int = 16, device: str = "cpu",
              log: Callable[[str], None] = print) -> dict:
    """Run lm-eval tasks on a run or checkpoint; returns {task: {metric: value}} plus lm-eval's table.

    Each entry of `tasks` is a task yaml file, a local task superpose builds from held-out text
    (superpose_cloze), or an lm-eval task or group name.
    """
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
        from lm_eval.utils import make_table
    except ImportError as e:
        raise UserError(f"--tasks needs lm-eval ({e}); install it with: pip install 'superpose[hf]'") from None
    from ..interop.lm_eval_adapter import SuperposeLM
    from .load import load_model, load_tokenizer, locate
    from ..tasks import LOCAL_TASKS, build_task

    src = locate(path)
    with tempfile.TemporaryDirectory(prefix="superpose-tasks-") as tmp:
        specs, hub = [], []
        for name in tasks:
            if name.endswith((".yaml", ".yml")):
                if not Path(name).is_file():
                    raise UserError(f"task file {name} does not exist")
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
        lm = SuperposeLM(load_model(src, device), load_tokenizer(src), max_length=src.seq_len, batch_size=batch_size)
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
