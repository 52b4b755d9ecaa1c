"""What a run writes into its directory before its first step: its mark (.superpose-run.json),
config.json, tokenizer.json, special_tokens.json and mi.json (the metrics log and the checkpoints
come later)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from .. import files
from ..config import Config, save_config
from ..files import sha256_file
from .ownership import mark_run


def write_run_files(run_dir: Path, cfg: Config, dataset, mi_fit: dict | None, log: Callable[[str], None]) -> None:
    """Create `run_dir` and write the run's own files into it (rank 0 only). The caller holds the
    run's lock (`files.lock_dir`), so temporaries found in the directory are a killed process's
    and are removed. dataset: the run's `Dataset` or `Mixture` (its tokenizer and token conventions)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    gone = files.remove_stale(run_dir)
    if gone:
        log(f"removed leftovers of an interrupted write in {run_dir}: {', '.join(gone)}")
    mark_run(run_dir)  # first: from now on the folder is a run's, whatever else is written into it
    fix = "free some space and run the command again"
    save_config(cfg, run_dir / "config.json", fix=fix)
    # The tokenizer goes in at the start, not only with the final model, so that every
    # checkpoint of the run can be used (generate, eval, export) on its own.
    tok = run_dir / "tokenizer.json"
    if not (tok.is_file() and sha256_file(tok) == sha256_file(dataset.tokenizer_path)):
        files.copy_file(dataset.tokenizer_path, tok, fix=fix)
    # The token conventions the data trained with (end-of-text, a BOS template's prefix), for
    # generate, eval and export of this run wherever its data directory goes.
    special = {"eot_id": dataset.eot_id, "prefix_ids": dataset.prefix_ids}
    files.write_text(run_dir / "special_tokens.json", json.dumps(special) + "\n", fix=fix)
    if mi_fit is not None:  # the run's own copy of its bag weights' source (build.mi_fit)
        files.write_text(run_dir / "mi.json", json.dumps(mi_fit, indent=2) + "\n", fix=fix)
