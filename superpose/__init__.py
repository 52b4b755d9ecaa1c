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

Each public name has one import path, the module that defines it; this file re-exports nothing
(and so imports no torch). Where the often-used ones live:

    superpose.core.llama             LlamaConfig (superpose.core.qwen3_moe: Qwen3MoeConfig; core.arch: ModelConfig)
    superpose.core.model             build_model, model_config (the registry of architectures)
    superpose.core.superposition     superpose_embeddings, next_bag_targets, multi_hot_cross_entropy
    superpose.inference.load         load_model, load_tokenizer (a run or a checkpoint)
    superpose.interop.hf_trainer     TSTTrainer, superposition_loss (TST for any HF causal LM)
    superpose.interop.lm_eval_adapter  SuperposeLM (importing it registers "superpose" with lm-eval)

The CLI is `superpose` (or `python -m superpose`). ARCHITECTURE.md draws the data flow, file by
file.
"""

__version__ = "0.1.0"
