"""superpose: Token Superposition Training (Peng, Gigant, Quesnelle, arXiv 2605.06546).

The TST math lives in `superpose.superposition`; the model in `superpose.model`; the two-phase
trainer in `superpose.trainer`; `load_model` / `load_tokenizer` open a run or checkpoint;
`superpose.hf` runs TST on any Hugging Face causal LM. The CLI is `superpose` (or `python -m superpose`).
"""

from .errors import UserError
from .inference.load import load_model, load_tokenizer
from .core.model import ModelConfig, Transformer, build_model
from .core.superposition import multi_hot_cross_entropy, next_bag_targets, superpose_embeddings

__version__ = "0.1.0"
__all__ = ["ModelConfig", "Transformer", "UserError", "build_model", "load_model", "load_tokenizer",
           "multi_hot_cross_entropy", "next_bag_targets", "superpose_embeddings"]
