"""The TST core: the superposition math (`superposition`), the plain Llama it trains (`model`),
and the phases and learning rate as functions of the step (`schedule`). Nothing here knows about
files, processes or logging."""
