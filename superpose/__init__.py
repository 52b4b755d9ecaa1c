"""superpose: Token Superposition Training (Peng, Gigant, Quesnelle, arXiv 2605.06546).

    core/       the TST math (superposition), the Llama it trains (model), phases and LR (schedule)
    data/       raw text -> tokenized shards -> the rows training reads
    config.py   the typed run config (presets.py: named presets, config files, resolve)
    checkpoint.py  the run directory's checkpoints and final model, as every reader sees them
    inference/  load a trained model, generate from it, the one evaluation loop
    interop/    Hugging Face export/import, TST for any HF causal LM, lm-eval (adapter, runner)
    training/   build a run once, step it, checkpoint and resume it, on one process or many
    experiments/  compare, sweep, their reports and plots

Each layer imports only from those listed above it (tests/test_imports.py holds the order).

`superpose.superposition` and `superpose.hf` are the documented paths of the TST math and of
`TSTTrainer`; `load_model` / `load_tokenizer` open a run or checkpoint. The CLI is `superpose`
(or `python -m superpose`). ARCHITECTURE.md draws the data flow, file by file.
"""

from importlib import import_module

from .errors import UserError

__version__ = "0.1.0"

# Imported on first use (PEP 562), not here: importing the package must not import torch, so the
# CLI (`superpose.cli`, whose import runs this file first) starts inside its own error handling,
# and a Ctrl-C during the seconds torch takes to import is one line, not a traceback.
_LAZY = {"ModelConfig": ".core.model", "LlamaConfig": ".core.model", "Qwen3MoeConfig": ".core.model",
         "model_config": ".core.model", "Transformer": ".core.model", "build_model": ".core.model",
         "multi_hot_cross_entropy": ".core.superposition", "next_bag_targets": ".core.superposition",
         "superpose_embeddings": ".core.superposition", "load_model": ".inference.load",
         "load_tokenizer": ".inference.load"}
__all__ = ["UserError", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
