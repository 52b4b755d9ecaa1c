"""The one evaluation: next-token loss and bits per byte, for the trainer, `superpose eval`,
compare and the Hugging Face Trainer alike.

    next_token_eval(forward, windows, ...)  the evaluation loop: loss and bits per byte, given a
                                            forward and the context it runs in
    open_eval_data(src, data)               the data directory a located model is scored on

`superpose eval` itself (`eval_cli.py`: the run's own windows, its arithmetic) and the lm-eval
runner (`interop/lm_eval_tasks.py`) sit above training and call these.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from contextlib import AbstractContextManager as ContextManager
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from ..data import DataSource, open_dataset, open_mixture
from ..data.corpus import prepare_command
from ..data.tokenizer import same_tokenizer
from ..errors import UserError


def bits_per_byte(nll_sum_nats: float, num_bytes: int) -> float:
    return nll_sum_nats / math.log(2) / max(num_bytes, 1)


@torch.no_grad()
def next_token_eval(forward: Callable[[Tensor], Tensor], windows: Tensor, batch_size: int, device: torch.device,
                    token_bytes: Tensor | None = None,
                    context: Callable[[], ContextManager] = contextlib.nullcontext) -> dict:
    """Next-token loss over (N, L + 1) windows and, given token_bytes, bits per UTF-8 byte: the one
    evaluation of superpose (the trainer, `superpose eval`, compare and the Hugging Face Trainer).

    forward: input ids (b, L) on `device` -> logits (b, L, V); the model, or under FSDP the wrapped
    module that gathers the sharded weights. context: entered around every forward (autocast, the
    attention kernel: `perf.compute_context`), so a run is scored with the arithmetic it trained
    with. token_bytes: (V,) UTF-8 bytes per token id; tokens that stand for no text (end-of-text)
    are left out of bits per byte, as nanochat does. The sums stay on the device in float64 and
    are read once, at the end; the byte counts come from the targets' CPU copy.
    """
    nll_sums = torch.zeros(2, dtype=torch.float64, device=device)  # (all targets, targets that are text)
    n_targets = n_bytes = 0
    for batch in windows.split(batch_size):
        nbytes = None if token_bytes is None else token_bytes.cpu()[batch[:, 1:].flatten().cpu()]  # (b*L,)
        batch = batch.to(device)
        x, y = batch[:, :-1], batch[:, 1:]  # (b, L) each
        with context():
            logits = forward(x)  # (b, L, V)
        nll = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="none")  # (b*L,)
        n_targets += nll.numel()
        if nbytes is None:
            nll_sums[0] += nll.sum().double()
            continue
        # index_select of the text positions (ascending) sums exactly the elements, in exactly the
        # order, that nll[nbytes > 0] would, without the device waiting for the mask's count.
        text = nbytes.nonzero().squeeze(1).to(device)
        nll_sums += torch.stack([nll.sum(), nll.index_select(0, text).sum()]).double()
        n_bytes += int(nbytes.sum())
    nll_sum, nll_text = nll_sums.tolist()  # the one sync
    out = {"val_loss": nll_sum / n_targets, "val_tokens": n_targets}
    if token_bytes is not None:
        out.update(val_bpb=bits_per_byte(nll_text, n_bytes), val_bytes=n_bytes)
    return out


def open_eval_data(src, data: Path | str | None) -> DataSource:
    """The data directory to evaluate on: `data`, else the run's own (a run on data.mix: its
    mixture, each source's share of the windows); its tokenizer must be the model's."""
    from .load import tokenizer_path

    mix = src.run_config.data.mix if data is None and src.run_config is not None else ""
    if mix:
        ds = open_mixture(mix)  # a source gone is one line from open_dataset
    else:
        if data is None and src.data_path is None:
            raise UserError(f"{src.path} does not record its data directory (no config.json); pass --data DATA_DIR")
        if data is None and not src.data_path.is_dir():
            default = not src.run_config.data.path  # a data_path comes from a run config
            what = "the default corpus the run trained on is not prepared in" if default else \
                "the run's data directory is gone:"
            raise UserError(f"{what} {src.data_path}; pass --data DATA_DIR (prepared with the same tokenizer)"
                            + (" or set SUPERPOSE_CACHE to the cache the run used" if default else ""))
        ds = open_dataset(Path(data) if data is not None else src.data_path)
    model_tok = tokenizer_path(src)
    if not same_tokenizer(ds.tokenizer_path, model_tok):
        raise UserError(f"{ds.path} was tokenized with another tokenizer than the model's ({model_tok}); prepare "
                        "its text with the model's: " + prepare_command("YOUR_TEXT", "NEW_DATA_DIR", "--tokenizer",
                                                                         str(model_tok)))
    if ds.vocab_size > src.model_config.vocab_size:
        raise UserError(f"{ds.path} has {ds.vocab_size} tokens, more than the model's {src.model_config.vocab_size}")
    return ds
