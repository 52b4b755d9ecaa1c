"""superpose and other libraries: Hugging Face Llama and Qwen3-MoE export and import (`hf_llama`, no
transformers needed), TST for any Hugging Face causal LM through its `Trainer` (`hf_trainer`),
and a superpose model as an lm-evaluation-harness `LM` (`lm_eval_adapter`)."""
