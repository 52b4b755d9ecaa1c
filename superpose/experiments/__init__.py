"""Experiments on top of the trainer: `compare` (TST against the matched-FLOPs baseline, over
paired seeds and run lengths), `sweep` (the r x s grid), their `report`s and plots, and the
`stats` they share; `arms` runs a compare seed's arms in lock-step."""
