"""TST for any Hugging Face causal LM at its documented path: `from superpose.hf import TSTTrainer`.

The code lives in `superpose.interop.hf_trainer` (and its data side, `superpose.interop.hf_data`);
this module re-exports their public names.
"""

from .interop.hf_data import DataError
from .interop.hf_trainer import TokenRows, TSTTrainer, collate_rows, next_token_loss, superposition_loss

__all__ = ["DataError", "TSTTrainer", "TokenRows", "collate_rows", "next_token_loss", "superposition_loss"]
