"""A superpose model as an lm-evaluation-harness `LM`, so any lm-eval task can score it.

    SuperposeLM(model, tokenizer, max_length, batch_size)
        loglikelihood          log P(continuation | context), and whether greedy decoding gives it
        loglikelihood_rolling  log P(text) over windows of max_length (perplexity tasks)
        generate_until         greedy (or sampled) decoding until a stop string, with the KV cache

Tokenisation follows lm-eval's Hugging Face model: the context's trailing spaces move to the
continuation, the continuation's tokens are those of (context + continuation) after the
context's, and an empty context is the end-of-text token (where every training document starts).
Inputs longer than max_length keep their last max_length tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lm_eval.api.model import LM
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from ..inference.generate import generate_ids
from ..inference.load import special_tokens


class SuperposeLM(LM):
    def __init__(self, model, tokenizer, max_length: int, batch_size: int = 16, src=None):
        super().__init__()
        self.model, self.tokenizer = model.eval(), tokenizer
        self.max_length, self.batch_size = max_length, batch_size
        special = special_tokens(tokenizer, src)  # src: the located model, whose data recorded them
        self.eot, self.prefix = special["eot_id"], special["prefix_ids"]
        self._device = next(model.parameters()).device

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole, ctx = self.encode(context + continuation), self.encode(context)
        # A context starts as a document did in training: with the tokenizer's prefix (BOS), if any.
        return ((self.prefix + ctx) or [self.eot]), whole[len(ctx):]

    @torch.no_grad()
    def score(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """(sum of log-probs of the continuation, whether each of its tokens is the argmax) per pair."""
        out: list[tuple[float, bool] | None] = [None] * len(pairs)
        # Longest first, so each batch pads little and the first one shows any memory problem.
        order = sorted(range(len(pairs)), key=lambda i: -len(pairs[i][0]) - len(pairs[i][1]))
        for start in range(0, len(order), self.batch_size):
            batch = order[start:start + self.batch_size]
            rows, conts = [], []
            for i in batch:
                ctx, cont = pairs[i]
                cont = cont[-self.max_length:]
                rows.append((ctx + cont)[-(self.max_length + 1):][:-1])  # inputs; the last token is only a target
                conts.append(cont)
            T = max(len(r) for r in rows)
            x = torch.zeros(len(rows), T, dtype=torch.long)  # right padding: causal, so it changes nothing before it
            for b, r in enumerate(rows):
                x[b, :len(r)] = torch.tensor(r)
            logp = F.log_softmax(self.model(x.to(self._device)).float(), dim=-1)  # (b, T, V)
            for b, (r, cont) in enumerate(zip(rows, conts)):
                lp = logp[b, len(r) - len(cont):len(r)]  # (n, V): the positions that predict the continuation
                target = torch.tensor(cont, device=lp.device)
                total = lp.gather(-1, target[:, None]).sum().item()
                out[batch[b]] = (total, bool((lp.argmax(-1) == target).all()))
        return out  # type: ignore[return-value]

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        results = self.score([self.encode_pair(*r.args) for r in requests])
        for r, res in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood", r.args, res)
        return results

    def loglikelihood_rolling(self, requests) -> list[float]:
        out = []
        for r in requests:
            windows = [make_disjoint_window(w) for w in get_rolling_token_windows(
                token_list=self.encode(r.args[0]), prefix_token=self.eot, max_seq_len=self.max_length, context_len=1)]
            total = sum(lp for lp, _ in self.score(windows))
            self.cache_hook.add_partial("loglikelihood_rolling", r.args, total)
            out.append(total)
        return out

    def generate_until(self, requests) -> list[str]:
        out = []
        for r in requests:
            context, kwargs = r.args
            kwargs = dict(kwargs or {})
            until = kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(kwargs.pop("max_gen_toks", 256))
            max_new = max(1, min(max_new, self.max_length - 1))
            temperature = float(kwargs.pop("temperature", 0.0)) if kwargs.pop("do_sample", False) else 0.0
            prompt = ([self.eot] + self.encode(context))[-(self.max_length - max_new):]
            ids, text = [], ""
            for token in generate_ids(self.model, prompt, max_new, temperature, int(kwargs.pop("top_k", 0) or 0),
                                      seed=1234, stop_id=self.eot):
                if token == self.eot:
                    break
                ids.append(token)
                text = self.tokenizer.decode(ids)
                if any(u in text for u in until):
                    break
            for u in until:
                text = text.split(u)[0]
            self.cache_hook.add_partial("generate_until", r.args, text)
            out.append(text)
        return out
