"""The TST core: the superposition math (`superposition`, its loss entries `losses` and their fused
kernels `loss_kernels`), the models it trains (shared blocks `layers` and `moe`; one module per
architecture, `llama` and `qwen3_moe`, described by an `arch.Architecture`; the registry and
`ModelConfig` in `model`), and the phases and learning rate as functions of the step (`schedule`).
Nothing here knows about files, processes or logging."""
