"""Sampling text from a trained model, with a key/value cache, streamed as it is decoded.

    generate_ids(model, prompt_ids, max_new_tokens, temperature, top_k, seed, stop_id)
        -> yields new token ids one at a time
    generate(path, prompt, ...) -> str         what `superpose generate` runs, printing as it goes

The prompt is encoded as the training data was (no special tokens) after an end-of-text token:
training saw every document start right after one, so that is where a prompt starts too.
Sampling stops at end-of-text or after `max_new_tokens`. Temperature 0 is greedy decoding.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from ..core.layers import KVCache
from ..core.llama import Transformer
from ..checks import check_seed
from ..errors import UserError


def sample_next(logits: Tensor, temperature: float, top_k: int, generator: torch.Generator | None) -> Tensor:
    """One token id per row from last-position logits (B, V): greedy at temperature 0, else a
    sample from softmax(logits / temperature) restricted to the top_k (0 = all) tokens."""
    if temperature == 0:
        return logits.argmax(dim=-1)  # (B,)
    # Shifted so the largest is 0 before dividing, in float64 (which holds any temperature > 0 the
    # float32 logits would round to 0): a tiny temperature (1e-40) then sends the others to -inf,
    # greedy in the limit, never the largest to inf (or 0 / 0) and softmax to NaN.
    logits = logits.double()
    logits = (logits - logits.max(dim=-1, keepdim=True).values) / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # (B,)


@torch.no_grad()
def generate_ids(model: Transformer, prompt_ids: list[int], max_new_tokens: int, temperature: float = 0.0,
                 top_k: int = 0, seed: int | None = None, stop_id: int | None = None,
                 use_cache: bool = True) -> Iterator[int]:
    """Yield up to `max_new_tokens` new token ids continuing `prompt_ids` (one sequence).

    With the cache, the prompt runs once and every later step feeds only the newest token; without
    it, every step reruns the whole sequence (the reference the cache is tested against).
    """
    device = next(model.parameters()).device
    generator = None
    if temperature > 0:
        generator = torch.Generator(device=device)
        generator.manual_seed(seed if seed is not None else torch.seed())
    ids = torch.tensor([prompt_ids], dtype=torch.long, device=device)  # (1, T)
    cache = KVCache(model.config.n_layers) if use_cache else None
    step_input = ids
    for _ in range(max_new_tokens):
        logits = model(step_input, cache=cache)[:, -1]  # (1, V)
        nxt = sample_next(logits, temperature, top_k, generator)  # (1,)
        token = int(nxt.item())
        yield token
        if token == stop_id:
            return
        ids = torch.cat((ids, nxt[:, None]), dim=1)
        step_input = nxt[:, None] if use_cache else ids


class TextStream:
    """Decode a growing list of ids into text, handing out only the new part. A byte-level BPE token
    can end inside a multi-byte character; such a tail ("\\ufffd") is held back until it completes."""

    def __init__(self, tokenizer):
        self.tokenizer, self.ids, self.sent = tokenizer, [], 0

    def add(self, token: int) -> str:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):
            return ""
        new, self.sent = text[self.sent:], len(text)
        return new

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character at the very end)."""
        text = self.tokenizer.decode(self.ids)
        new, self.sent = text[self.sent:], len(text)
        return new

    def text(self) -> str:
        return self.tokenizer.decode(self.ids)


def generate(path: Path | str, prompt: str, max_new_tokens: int = 200, temperature: float = 0.8, top_k: int = 50,
             seed: int | None = None, device: str = "cpu", out: Callable[[str], None] | None = None,
             log: Callable[[str], None] = print, echo_prompt: bool = False) -> str:
    """Sample a continuation of `prompt` from a run directory or checkpoint, streaming it to `out`
    (stdout by default), after the prompt itself with echo_prompt (the CLI). Returns the generated
    text (without the prompt). Arguments and files are checked before anything is written."""
    from .load import load_model, load_tokenizer, locate, special_tokens

    if max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
    if not (math.isfinite(temperature) and temperature >= 0):  # nan passes `< 0` and samples garbage
        raise UserError(f"--temperature must be >= 0 and finite (0 = greedy), got {temperature}")
    if top_k < 0:
        raise UserError(f"--top-k must be >= 0 (0 = no limit), got {top_k}")
    if seed is not None:
        check_seed(seed, "--seed")
    try:  # a terminal in another encoding passes undecodable bytes as lone surrogates
        prompt.encode("utf-8")
    except UnicodeEncodeError as e:
        bad = e.object[e.start:e.end].encode("utf-8", "surrogateescape")  # the bytes as the shell gave them
        raise UserError(f"--prompt is not valid UTF-8 text (bytes {bad!r} at character {e.start}); "
                        "pass the prompt as UTF-8 (check the terminal's or the file's encoding)") from None
    src = locate(path)
    tokenizer = load_tokenizer(src)
    model = load_model(src, device)
    if src.is_phase1:
        log(f"note: {src.name} is a phase-1 (superposition) checkpoint: it predicts bags, not next tokens, so "
            "its samples are not meaningful text")
    special = special_tokens(tokenizer, src)
    eot = special["eot_id"]
    # As a document starts in the training data: after an end-of-text, the tokenizer's own prefix (BOS) first.
    prompt_ids = [eot, *special["prefix_ids"], *tokenizer.encode(prompt, add_special_tokens=False).ids]
    context = src.seq_len
    if max_new_tokens >= context:
        raise UserError(f"--max-new-tokens {max_new_tokens} does not fit the model's context of {context} "
                        f"positions (data.seq_len); use at most {context - 1}")
    if len(prompt_ids) + max_new_tokens > context:
        keep = context - max_new_tokens
        log(f"note: the prompt has {len(prompt_ids)} tokens; only its last {keep} fit the {context}-position "
            f"context with {max_new_tokens} new tokens")
        prompt_ids = prompt_ids[-keep:]
    write = out or (lambda s: (sys.stdout.write(s), sys.stdout.flush()))
    if echo_prompt:
        write(prompt)
    stream = TextStream(tokenizer)
    for token in generate_ids(model, prompt_ids, max_new_tokens, temperature, top_k, seed, stop_id=eot):
        if token == eot:
            break
        write(stream.add(token))
    write(stream.flush())
    return stream.text()
