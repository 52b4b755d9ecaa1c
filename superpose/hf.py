"""TST for any Hugging Face causal LM at its documented path: `from superpose.hf import TSTTrainer`.

The code lives in `superpose.interop.hf_trainer`; this module re-exports its public names.
"""

from .interop.hf_trainer import TokenRows, TSTTrainer, collate_rows, next_token_loss, superposition_loss

__all__ = ["TSTTrainer", "TokenRows", "collate_rows", "next_token_loss", "superposition_loss"]
