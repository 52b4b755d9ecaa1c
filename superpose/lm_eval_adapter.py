"""The lm-evaluation-harness adapter at its documented path: `superpose.lm_eval_adapter.SuperposeLM`.

The code lives in `superpose.interop.lm_eval_adapter`; this module re-exports it.
"""

from .interop.lm_eval_adapter import SuperposeLM

__all__ = ["SuperposeLM"]
