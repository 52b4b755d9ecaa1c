"""superpose: Token Superposition Training (Peng, Gigant, Quesnelle, arXiv 2605.06546).

    core/       the TST math (superposition), the Llama it trains (model), phases and LR (schedule)
    data/       raw text -> tokenized shards -> the rows training reads
    training/   build a run once, step it, checkpoint and resume it, on one process or many
    inference/  load a trained model, generate from it, evaluate it
    interop/    Hugging Face export/import, TST for any HF causal LM, the lm-eval adapter

`superpose.superposition` and `superpose.hf` are the documented paths of the TST math and of
`TSTTrainer`; `load_model` / `load_tokenizer` open a run or checkpoint. The CLI is `superpose`
(or `python -m superpose`). ARCHITECTURE.md draws the data flow, file by file.
"""

from .core.model import ModelConfig, Transformer, build_model
from .core.superposition import multi_hot_cross_entropy, next_bag_targets, superpose_embeddings
from .errors import UserError
from .inference.load import load_model, load_tokenizer

__version__ = "0.1.0"
__all__ = ["ModelConfig", "Transformer", "UserError", "build_model", "load_model", "load_tokenizer",
           "multi_hot_cross_entropy", "next_bag_targets", "superpose_embeddings"]
