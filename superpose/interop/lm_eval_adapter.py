"""A superpose model as an lm-evaluation-harness `LM`, so any lm-eval task can score it.

    superpose-lm-eval --model superpose --model_args path=RUN --tasks ...
                           lm-eval's own command line with this model registered (below)
    lm_eval.simple_evaluate(model="superpose", model_args="path=RUN", ...)
                           in Python, once this module is imported (`import superpose.interop.lm_eval_adapter`)
    SuperposeLM(model, tokenizer, max_length, batch_size)
        loglikelihood          log P(continuation | context), and whether greedy decoding gives it
        loglikelihood_rolling  log P(text) over windows of max_length (perplexity tasks)
        generate_until         greedy (or sampled) decoding until a stop string, with the KV cache

Tokenisation follows lm-eval's Hugging Face model: the context's trailing spaces move to the
continuation, the continuation's tokens are those of (context + continuation) after the
context's, and an empty context is the end-of-text token (where every training document starts).
Inputs longer than max_length keep their last max_length tokens.

Registration: lm-eval 0.4.x finds models only in its own registry and reads no plugin entry
points (lm-evaluation-harness issues #1621 and #3282), so plain `lm_eval` cannot see an
out-of-tree model. Importing this module registers "superpose" there, and the
`superpose-lm-eval` console script (`main`) is lm-eval's CLI after that import: every lm_eval
flag works the same. model_args: path (a run directory, checkpoint or exported folder; required),
max_length (default: the context the model trained at); --device and --batch_size as lm-eval
passes them.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window, simple_parse_args_string

from ..errors import UserError
from .hf_llama import MANIFEST as EXPORT_MANIFEST
from ..inference.generate import generate_ids
from ..inference.load import special_tokens

@register_model("superpose")
class SuperposeLM(LM):
    def __init__(self, model, tokenizer, max_length: int, batch_size: int = 16, src=None):
        super().__init__()
        self.model, self.tokenizer = model.eval(), tokenizer
        self.max_length, self.batch_size = max_length, batch_size
        special = special_tokens(tokenizer, src)  # src: the located model, whose data recorded them
        self.eot, self.prefix = special["eot_id"], special["prefix_ids"]
        self._device = next(model.parameters()).device

    @classmethod
    def from_path(cls, path=None, max_length: int | None = None, batch_size=16, device: str | None = None,
                  max_batch_size=None, **unknown) -> SuperposeLM:
        """The model of a run directory, checkpoint or exported folder, as lm-eval's `--model_args
        path=RUN` names it (lm-eval adds batch_size, max_batch_size and device)."""
        from ..inference.load import load_model, load_tokenizer, locate

        if unknown:
            raise UserError(f"unknown superpose model_args {', '.join(sorted(unknown))}; it takes "
                            "path=RUN_DIR (required), max_length=N, and lm-eval's --device and --batch_size")
        if not path:
            raise UserError("--model superpose needs --model_args path=RUN_DIR (a run, checkpoint or exported folder)")
        length = _positive(max_length, "max_length") if max_length is not None else None
        # lm-eval's --device defaults to cuda; like its own HF model, fall back to the CPU without one.
        device = str(device or "cpu")
        if device.startswith("cuda") and not torch.cuda.is_available():
            print(f"superpose-lm-eval: --device {device} (lm-eval's default), but there is no CUDA device here: "
                  "the model runs on the CPU", file=sys.stderr)
            device = "cpu"
        # lm-eval's "auto" batch size probes GPU memory; these models are small: 16 rows per batch.
        batch = int(batch_size) if str(batch_size).isdigit() and int(batch_size) > 0 else 16
        if (Path(path) / EXPORT_MANIFEST).is_file():  # a folder `superpose export` wrote
            model, tokenizer, trained = _load_export(Path(path), device)
            return cls(model, tokenizer, max_length=length or trained, batch_size=batch)
        src = locate(path)
        return cls(load_model(src, device), load_tokenizer(src), max_length=length or src.seq_len,
                   batch_size=batch, src=src)

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> SuperposeLM:
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None}
        return cls.from_path(**{**simple_parse_args_string(arg_string), **extra})

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None) -> SuperposeLM:
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None}
        return cls.from_path(**{**arg_dict, **extra})

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole, ctx = self.encode(context + continuation), self.encode(context)
        # A context starts as a document did in training: with the tokenizer's prefix (BOS), if any.
        return ((self.prefix + ctx) or [self.eot]), whole[len(ctx):]

    @torch.no_grad()
    def score(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """(sum of log-probs of the continuation, whether each of its tokens is the argmax) per pair."""
        out: list[tuple[float, bool] | None] = [None] * len(pairs)
        # Longest first, so each batch pads little and the first one shows any memory problem.
        order = sorted(range(len(pairs)), key=lambda i: -len(pairs[i][0]) - len(pairs[i][1]))
        for start in range(0, len(order), self.batch_size):
            batch = order[start:start + self.batch_size]
            rows, conts = [], []
            for i in batch:
                ctx, cont = pairs[i]
                cont = cont[-self.max_length:]
                rows.append((ctx + cont)[-(self.max_length + 1):][:-1])  # inputs; the last token is only a target
                conts.append(cont)
            T = max(len(r) for r in rows)
            x = torch.zeros(len(rows), T, dtype=torch.long)  # right padding: causal, so it changes nothing before it
            for b, r in enumerate(rows):
                x[b, :len(r)] = torch.tensor(r)
            logp = F.log_softmax(self.model(x.to(self._device)).float(), dim=-1)  # (b, T, V)
            for b, (r, cont) in enumerate(zip(rows, conts)):
                lp = logp[b, len(r) - len(cont):len(r)]  # (n, V): the positions that predict the continuation
                target = torch.tensor(cont, device=lp.device)
                total = lp.gather(-1, target[:, None]).sum().item()
                out[batch[b]] = (total, bool((lp.argmax(-1) == target).all()))
        return out  # type: ignore[return-value]

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        results = self.score([self.encode_pair(*r.args) for r in requests])
        for r, res in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood", r.args, res)
        return results

    def loglikelihood_rolling(self, requests) -> list[float]:
        out = []
        for r in requests:
            windows = [make_disjoint_window(w) for w in get_rolling_token_windows(
                token_list=self.encode(r.args[0]), prefix_token=self.eot, max_seq_len=self.max_length, context_len=1)]
            total = sum(lp for lp, _ in self.score(windows))
            self.cache_hook.add_partial("loglikelihood_rolling", r.args, total)
            out.append(total)
        return out

    def generate_until(self, requests) -> list[str]:
        out = []
        for r in requests:
            context, kwargs = r.args
            kwargs = dict(kwargs or {})
            until = kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(kwargs.pop("max_gen_toks", 256))
            max_new = max(1, min(max_new, self.max_length - 1))
            temperature = float(kwargs.pop("temperature", 0.0)) if kwargs.pop("do_sample", False) else 0.0
            prompt = ([self.eot] + self.encode(context))[-(self.max_length - max_new):]
            ids, text = [], ""
            for token in generate_ids(self.model, prompt, max_new, temperature, int(kwargs.pop("top_k", 0) or 0),
                                      seed=1234, stop_id=self.eot):
                if token == self.eot:
                    break
                ids.append(token)
                text = self.tokenizer.decode(ids)
                if any(u in text for u in until):
                    break
            for u in until:
                text = text.split(u)[0]
            self.cache_hook.add_partial("generate_until", r.args, text)
            out.append(text)
        return out


def _load_export(folder: Path, device: str):
    """(model, tokenizer, trained context) of a folder `superpose export` wrote: its config.json
    read back into a superpose model, its weights verified against the export's checksums
    (`init_from_hf`), the context from the checksum file (older exports: the model's positions)."""
    import json

    from ..checks import device as check_device
    from ..core.model import empty_model
    from ..data.tokenizer import load_tokenizer_file
    from .hf_llama import init_from_hf, read_hf_config

    cfg = read_hf_config(folder)
    model = empty_model(cfg, check_device(device))
    init_from_hf(model, folder)
    tokenizer = load_tokenizer_file(folder / "tokenizer.json", fix="export the model again")
    try:
        trained = int(json.loads((folder / EXPORT_MANIFEST).read_text()).get("seq_len") or cfg.max_seq_len)
    except (OSError, ValueError, TypeError, AttributeError):  # init_from_hf verified the file's records already
        trained = cfg.max_seq_len
    return model.eval(), tokenizer, trained


def _positive(value, name: str) -> int:
    """A model_args value that must be a whole number >= 1 (lm-eval passes it as text, or as the
    number its parser made of it)."""
    try:
        n = int(str(value).strip())
    except ValueError:
        n = 0
    if n < 1 or (isinstance(value, float) and value != n):
        raise UserError(f"model_args {name}={value} must be a whole number >= 1")
    return n


# ----------------------------------------------------------------------------- lm-eval's CLI


def _git_hash_quietly():
    """lm-eval records the git commit of the working directory by running `git describe`, whose
    "fatal: not a git repository" outside a repository lands in the user's terminal; the same
    question, with git's complaints discarded."""
    try:
        out = subprocess.run(["git", "describe", "--always"], capture_output=True, text=True, check=True)
        return out.stdout.strip() or None
    except (OSError, subprocess.CalledProcessError):
        return None


def quiet_git() -> None:
    import lm_eval.evaluator

    if hasattr(lm_eval.evaluator, "get_git_commit_hash"):
        lm_eval.evaluator.get_git_commit_hash = _git_hash_quietly


def main() -> None:
    """`superpose-lm-eval`: lm-eval's own command line (`lm_eval ...`, every flag as documented
    there) with `--model superpose` registered. A user error is one line and exit code 2."""
    from lm_eval.__main__ import cli_evaluate

    quiet_git()
    try:
        _check_local_tasks(sys.argv[1:])
        cli_evaluate()
    except UserError as e:
        print(f"superpose-lm-eval: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except ValueError as e:
        if not str(e).startswith("Tasks not found"):  # lm-eval's own words for an unknown task name
            raise
        print(f"superpose-lm-eval: {e}; give an lm-eval task name, or --include_path FOLDER holding the task's "
              "yaml", file=sys.stderr)
        raise SystemExit(2) from None


def _check_local_tasks(argv: list[str]) -> None:
    """superpose_cloze is built from a data directory, so lm-eval has no such task until it is
    built into a folder given with --include_path: say how, before lm-eval's traceback does."""
    from ..tasks import LOCAL_TASKS

    given = {a.split("=", 1)[0] for a in argv}
    names = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--tasks"]
    names += [a.split("=", 1)[1] for a in argv if a.startswith("--tasks=")]
    local = [t for n in names for t in n.split(",") if t.strip() in LOCAL_TASKS]
    if local and "--include_path" not in given:
        raise UserError(f"{local[0]} is built from a data directory: run superpose eval RUN_DIR --tasks {local[0]} "
                        "(it builds and runs it), or build it with python -c \"from superpose.tasks import "
                        "build_cloze; build_cloze('DATA_DIR', 'tasks')\" and add --include_path tasks")
