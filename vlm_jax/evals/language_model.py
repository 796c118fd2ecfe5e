"""A language model's held-out evaluation: exact perplexity over sentences (every target token, EOS included,
teacher-forced), and greedy continuations of prompts through the KV cache."""
from __future__ import annotations

import contextlib
import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from vlm_jax.losses.generative import shift_right
from vlm_jax.models import decoding
from vlm_jax.models.decoder import step_fn


def nll_sums(model: Any, params: Any, tokens: jax.Array, bos_id: int, pad_id: int) -> tuple[jax.Array, jax.Array]:
    """(summed negative log-likelihood, target tokens) of right-padded sequences [B, L] under `model`."""
    logits, _ = model.apply({"params": params}, shift_right(tokens, bos_id))
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, tokens[..., None], axis=-1)[..., 0]
    mask = (tokens != pad_id).astype(jnp.float32)
    return jnp.sum(nll * mask), jnp.sum(mask)


def continue_greedy(model: Any, params: Any, prompts: np.ndarray, prompt_len: int, max_new: int, ids: dict[str, int]
                    ) -> np.ndarray:
    """Greedy continuations [N, max_new] of each row's first `prompt_len` tokens (fed through the cache after BOS),
    stopping at EOS (later positions pad)."""
    n = prompts.shape[0]
    step = step_fn(model, params, {})  # a text-only model: no image context
    cache = model.init_cache(n)
    tokens = jnp.full((n,), ids["bos"], jnp.int32)
    for i in range(prompt_len):  # the prompt, teacher-forced through the cache
        _, cache = step(tokens, cache, jnp.int32(i))
        tokens = jnp.asarray(prompts[:, i], jnp.int32)
    return np.asarray(decoding.greedy(step, cache, tokens, max_len=max_new, eos_id=ids["eos"], pad_id=ids["pad"]))


def unigram_log_probs(tokens: np.ndarray, vocab: int, pad_id: int) -> np.ndarray:
    """float64 [vocab] log-frequencies of the non-pad ids in `tokens`, add-one smoothed over the vocabulary."""
    counts = np.bincount(tokens[tokens != pad_id].ravel(), minlength=vocab).astype(np.float64) + 1.0
    return np.log(counts / counts.sum())


class PerplexityEvaluator:
    """Held-out perplexity and nll (nats per target token, EOS included) over `sentences` as results-table rows
    ("<name>/all/<metric>/model"), beside a unigram model of `train_tokens` ("unigram") and the uniform
    distribution over the vocabulary ("chance"); greedy continuations of `samples` evenly spaced sentences from
    their first `prompt_len` tokens, printed."""

    def __init__(self, model: Any, tokenize: Callable[[list[str]], np.ndarray], decode: Callable, ids: dict[str, int],
                 sentences: list[str], train_tokens: np.ndarray, name: str = "test", batch_size: int = 256,
                 samples: int = 4, prompt_len: int = 3, context: Callable[[], Any] = contextlib.nullcontext):
        self.model, self.ids, self.name, self.batch_size = model, ids, name, batch_size
        self.decode, self.samples, self.prompt_len, self.context = decode, samples, prompt_len, context
        self.tokens = tokenize(sentences)
        mask = self.tokens != ids["pad"]
        unigram = unigram_log_probs(train_tokens, ids["vocab"], ids["pad"])
        self.unigram_nll = float(-unigram[self.tokens[mask]].mean())
        self._sums = jax.jit(functools.partial(nll_sums, model, bos_id=ids["bos"], pad_id=ids["pad"]))

    def __call__(self, params: Any, extra: Any) -> dict[str, float]:
        del extra
        total, count = 0.0, 0.0
        with self.context():
            for start in range(0, len(self.tokens), self.batch_size):
                chunk = self.tokens[start:start + self.batch_size]
                pad = self.batch_size - len(chunk)  # a fixed batch shape: one compilation; pad rows count nothing
                rows = np.concatenate([chunk, np.full((pad, chunk.shape[1]), self.ids["pad"], chunk.dtype)])
                s, c = self._sums(params, jnp.asarray(rows))
                total, count = total + float(s), count + float(c)
            base = f"{self.name}/all"
            nll = total / count
            out = {f"{base}/nll/model": nll, f"{base}/nll/unigram": self.unigram_nll,
                   f"{base}/nll/chance": math.log(self.ids["vocab"]), f"{base}/perplexity/model": math.exp(nll),
                   f"{base}/perplexity/unigram": math.exp(self.unigram_nll),
                   f"{base}/perplexity/chance": float(self.ids["vocab"]), f"{self.name}/tokens": count}
            if self.samples:
                rows = np.linspace(0, len(self.tokens) - 1, self.samples).round().astype(int)
                prompts = self.tokens[rows]
                new = continue_greedy(self.model, params, prompts, self.prompt_len,
                                      self.tokens.shape[1] - self.prompt_len, self.ids)
                for prompt, cont in zip(self.decode(prompts[:, :self.prompt_len]), self.decode(new)):
                    print(f"[{self.name}] {prompt} → {cont}")
        return out
