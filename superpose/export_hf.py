"""Hugging Face Llama export and import at their earlier path (`superpose.export_hf`).

The code lives in `superpose.interop.hf_llama`; this module re-exports its public names.
"""

from .interop.hf_llama import (HF_NAME_MAP, config_from_hf, export_hf, from_hf_name, hf_config, init_from_hf,
                               load_hf_state, read_hf_config, to_hf_name)

__all__ = ["HF_NAME_MAP", "config_from_hf", "export_hf", "from_hf_name", "hf_config", "init_from_hf",
           "load_hf_state", "read_hf_config", "to_hf_name"]
