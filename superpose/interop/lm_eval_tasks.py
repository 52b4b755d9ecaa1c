"""The lm-eval runner of `superpose eval --tasks`: lm-evaluation-harness tasks on a run or
checkpoint through `SuperposeLM`: task yaml files, superpose_cloze (built from held-out text,
offline: `superpose.tasks`), or lm-eval's own task names (hellaswag, arc_easy, mmlu, ...: these
fetch their data from the Hugging Face hub). lm-eval is imported only once the arguments are
checked, and its absence is one line.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from pathlib import Path

from ..errors import UserError
from ..inference.evaluate import open_eval_data
from ..inference.load import ModelFiles, load_model, load_tokenizer, locate
from ..tasks import LOCAL_TASKS, build_task

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
    if not isinstance(doc.get("task", ""), (str, list)):  # a group lists its tasks; a task is a name
        raise UserError(f"task file {path} has task: {doc['task']!r}, not a name; write task: NAME (text)")
    missing = [f for f in _local_files(doc.get("dataset_kwargs")) if not Path(f).exists()]
    if missing:
        raise UserError(f"task file {path} names the data file {missing[0]}, which does not exist; fix data_files in "
                        "the task yaml (a path is read from the current directory)")


def _local_files(kwargs) -> list[str]:
    """The local paths among a task's dataset_kwargs.data_files (a path, a list, or split -> either);
    URLs (hf://, https://) and glob patterns are left to the datasets library."""
    files = kwargs.get("data_files") if isinstance(kwargs, dict) else None
    if isinstance(files, dict):
        files = list(files.values())
    out = []
    for f in files if isinstance(files, list) else [files]:
        if isinstance(f, list):
            out += _local_files({"data_files": f})
        elif isinstance(f, str) and "://" not in f and not any(c in f for c in "*?["):
            out.append(f)
    return out


def run_tasks(path: Path | str, tasks: list[str], data: Path | str | None = None, limit: int | None = None,
              num_fewshot: int | None = None, batch_size: int = 16, device: str = "cpu",
              log: Callable[[str], None] = print) -> dict:
    """Run lm-eval tasks on a run or checkpoint; returns {task: {metric: value}} plus lm-eval's table.

    Each entry of `tasks` is a task yaml file, a local task superpose builds from held-out text
    (superpose_cloze), or an lm-eval task or group name.
    """
    tasks = _check_arguments(tasks, limit, num_fewshot, batch_size)  # first: importing lm-eval takes seconds
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
        from lm_eval.utils import make_table
    except ImportError as e:
        raise UserError(f"--tasks needs lm-eval ({e}); install it with: pip install 'superpose[hf]'") from None
    from .lm_eval_adapter import SuperposeLM, quiet_git

    src = locate(path)
    with tempfile.TemporaryDirectory(prefix="superpose-tasks-") as tmp:
        specs, hub = _task_specs(src, tasks, data, Path(tmp), log)
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
        except ValueError as e:
            if num_fewshot is None or "Sample larger than population" not in str(e):
                raise
            raise UserError(f"--num-fewshot {num_fewshot} is more examples than a task has to draw them from; use "
                            "fewer (0 for none; the paper's evaluation is 0-shot)") from None
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


def _check_arguments(tasks: list[str], limit: int | None, num_fewshot: int | None, batch_size: int) -> list[str]:
    """The task names, stripped; a UserError for any argument out of range."""
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
    return tasks


def _task_specs(src: ModelFiles, tasks: list[str], data: Path | str | None, tmp: Path,
                log: Callable[[str], None]) -> tuple[list[str], list[str]]:
    """(what lm-eval is given for each task, the names it must find itself): a yaml file checked
    and resolved, a local task built into `tmp` from the evaluation data, else a hub name."""
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
            specs.append(str(build_task(name, ds.path, tmp / name)))
        else:
            hub.append(name)
            specs.append(name)
    return specs, hub
