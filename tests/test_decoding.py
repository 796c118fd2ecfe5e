"""Decoding library tests against NumPy references on a toy trigram-with-position model.

The toy step_fn's logits depend on the input token and on the cache's `last` (the token fed one step earlier),
so a wrong beam reordering or B -> B*K expansion of the cache changes the logits; the cache's `count` must equal
the position or the logits turn NaN, which checks that the cache is threaded through every step.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlm_jax.models import decoding

EOS = 1


class Toy:
    """Fixed random trigram + position model with a NumPy twin."""

    def __init__(self, seed: int, vocab: int, max_pos: int, eos_bias: float = 0.0, scale: float = 2.0):
        rng = np.random.RandomState(seed)
        self.vocab = vocab
        self.t_tok = (rng.randn(vocab, vocab) * scale).astype(np.float32)
        self.t_last = (rng.randn(vocab, vocab) * scale).astype(np.float32)
        self.t_pos = rng.randn(max_pos, vocab).astype(np.float32)
        self.t_pos[:, EOS] += eos_bias

    def logits(self, token: int, last: int, pos: int) -> np.ndarray:
        """NumPy logits for one row (float32, same summation order as the JAX step)."""
        return (self.t_tok[token] + self.t_last[last]) + self.t_pos[pos]

    def step_fn(self, tokens: jax.Array, cache: dict, position: jax.Array) -> tuple[jax.Array, dict]:
        """JAX step: logits from the input token, the cached previous input and the position."""
        t_tok, t_last, t_pos = jnp.asarray(self.t_tok), jnp.asarray(self.t_last), jnp.asarray(self.t_pos)
        logits = (t_tok[tokens] + t_last[cache["last"]]) + t_pos[position]
        logits = jnp.where((cache["count"] == position)[:, None], logits, jnp.nan)
        return logits, {"last": tokens, "count": cache["count"] + 1}


def init_cache(last0: np.ndarray) -> dict:
    """Per-row initial cache (distinct `last` per row checks row-major beam expansion)."""
    return {"last": jnp.asarray(last0, jnp.int32), "count": jnp.zeros(len(last0), jnp.int32)}


def log_softmax(x: np.ndarray) -> np.ndarray:
    """Float64 log-softmax."""
    x = x.astype(np.float64)
    m = x.max()
    return x - m - np.log(np.exp(x - m).sum())


def np_greedy(model: Toy, bos, last0, max_len: int, pad: int) -> np.ndarray:
    """Reference greedy loop: argmax each step, stop after EOS, pad the rest."""
    out = np.full((len(bos), max_len), pad, np.int32)
    for r in range(len(bos)):
        tok, last = int(bos[r]), int(last0[r])
        for t in range(max_len):
            nxt = int(np.argmax(model.logits(tok, last, t)))
            out[r, t] = nxt
            if nxt == EOS:
                break
            tok, last = nxt, tok
    return out


def seq_logps(model: Toy, bos: int, last0: int, seq) -> list[float]:
    """Per-token log-probs of a generated sequence (up to and including EOS)."""
    tok, last, out = bos, last0, []
    for t, nxt in enumerate(seq):
        out.append(log_softmax(model.logits(tok, last, t))[nxt])
        if nxt == EOS:
            break
        tok, last = nxt, tok
    return out


def lp(length: int, alpha: float) -> float:
    """Length normaliser of the reference."""
    return ((5.0 + length) / 6.0) ** alpha


def seq_score(model: Toy, bos: int, last0: int, seq, alpha: float) -> float:
    """Length-normalised score of a generated sequence."""
    logps = seq_logps(model, bos, last0, seq)
    return sum(logps) / lp(len(logps), alpha)


def brute_force(model: Toy, bos: int, last0: int, max_len: int, alpha: float) -> list[tuple[float, tuple]]:
    """All sequences ending at EOS or at max_len with their scores, best first."""
    results = []

    def rec(prefix: tuple, tok: int, last: int, logp: float):
        t = len(prefix)
        lps = log_softmax(model.logits(tok, last, t))
        for nxt in range(model.vocab):
            seq, total = prefix + (nxt,), logp + lps[nxt]
            if nxt == EOS or t == max_len - 1:
                results.append((total / lp(t + 1, alpha), seq))
            else:
                rec(seq, nxt, tok, total)

    rec((), bos, last0, 0.0)
    return sorted(results, key=lambda x: -x[0])


def strip(row: np.ndarray, pad: int) -> tuple:
    """Generated tokens up to and including EOS (or the full row)."""
    row = [int(x) for x in row]
    return tuple(row[: row.index(EOS) + 1]) if EOS in row else tuple(row)


def assert_padded(out: np.ndarray, pad: int):
    """Every position after a row's first EOS is pad."""
    for row in out:
        hits = np.flatnonzero(row == EOS)
        if len(hits):
            assert (row[hits[0] + 1:] == pad).all(), row


BOS = np.array([0, 2, 3, 4, 5, 2], np.int32)
LAST0 = np.array([3, 0, 5, 1, 2, 4], np.int32)


def test_greedy_matches_numpy():
    model = Toy(1, vocab=7, max_pos=10)
    out = np.asarray(decoding.greedy(model.step_fn, init_cache(LAST0), jnp.asarray(BOS), max_len=10, eos_id=EOS,
                                     pad_id=0))
    ref = np_greedy(model, BOS, LAST0, 10, pad=0)
    assert (ref == EOS).any(axis=1).any() and not (ref == EOS).any(axis=1).all()  # mixes finished / unfinished
    np.testing.assert_array_equal(out, ref)
    assert out.dtype == np.int32


def test_always_eos_gives_eos_then_pad():
    model = Toy(1, vocab=6, max_pos=5, eos_bias=100.0)
    bos, cache = jnp.asarray(BOS[:3]), init_cache(LAST0[:3])
    expected = np.array([[EOS, 4, 4, 4, 4]] * 3)
    np.testing.assert_array_equal(decoding.greedy(model.step_fn, cache, bos, max_len=5, eos_id=EOS, pad_id=4),
                                  expected)
    np.testing.assert_array_equal(decoding.sample(model.step_fn, cache, bos, jax.random.key(0), max_len=5,
                                                  eos_id=EOS, pad_id=4), expected)
    toks, _ = decoding.beam_search(model.step_fn, cache, bos, max_len=5, eos_id=EOS, beam_size=2, pad_id=4)
    np.testing.assert_array_equal(toks[:, 0], expected)


def test_loop_stops_early_when_all_rows_done():
    model = Toy(2, vocab=6, max_pos=20, eos_bias=-100.0)
    model.t_pos[3, EOS] = 200.0  # every row emits EOS at position 3
    calls = []

    def counting_step(tokens, cache, position):
        jax.debug.callback(lambda p: calls.append(int(p)), position)
        return model.step_fn(tokens, cache, position)

    out = decoding.greedy(counting_step, init_cache(LAST0), jnp.asarray(BOS), max_len=20, eos_id=EOS)
    jax.effects_barrier()
    assert (np.asarray(out)[:, 3] == EOS).all() and (np.asarray(out)[:, 4:] == 0).all()
    assert sorted(calls) == [0, 1, 2, 3]


def test_beam_size_one_equals_greedy():
    # EOS is never competitive except where forced, so a single beam must follow the greedy path.
    model = Toy(3, vocab=7, max_pos=8, eos_bias=-30.0)
    model.t_pos[5, EOS] = 60.0
    bos, cache = jnp.asarray(BOS), init_cache(LAST0)
    g = np.asarray(decoding.greedy(model.step_fn, cache, bos, max_len=8, eos_id=EOS))
    toks, scores = decoding.beam_search(model.step_fn, cache, bos, max_len=8, eos_id=EOS, beam_size=1)
    np.testing.assert_array_equal(np.asarray(toks)[:, 0], g)
    assert (g[:, 5] == EOS).all()
    for r in range(len(BOS)):
        np.testing.assert_allclose(scores[r, 0], seq_score(model, BOS[r], LAST0[r], strip(g[r], 0), 0.6), rtol=1e-5)


@pytest.mark.parametrize("alpha", [0.0, 0.6, 2.0])
def test_beam_search_matches_brute_force(alpha):
    vocab, max_len = 5, 4
    k = (vocab - 1) ** (max_len - 1)  # covers every alive prefix: beam search is exact
    model = Toy(4, vocab=vocab, max_pos=max_len, eos_bias=0.5, scale=1.0)
    bos, last0 = BOS[:3] % vocab, LAST0[:3] % vocab
    toks, scores = decoding.beam_search(model.step_fn, init_cache(last0), jnp.asarray(bos), max_len=max_len,
                                        eos_id=EOS, beam_size=k, pad_id=0, length_penalty=alpha)
    toks, scores = np.asarray(toks), np.asarray(scores)
    assert toks.shape == (3, k, max_len) and scores.shape == (3, k)
    for r in range(3):
        ref = brute_force(model, int(bos[r]), int(last0[r]), max_len, alpha)
        assert strip(toks[r, 0], 0) == ref[0][1]
        np.testing.assert_allclose(scores[r], [s for s, _ in ref[:k]], rtol=1e-5, atol=1e-5)
        assert set(strip(t, 0) for t in toks[r]) == set(seq for _, seq in ref[:k])
        assert_padded(toks[r], 0)


def test_beam_scores_equal_recomputed_scores():
    model = Toy(5, vocab=8, max_pos=7, eos_bias=1.5)
    toks, scores = decoding.beam_search(model.step_fn, init_cache(LAST0), jnp.asarray(BOS), max_len=7,
                                        eos_id=EOS, beam_size=3, pad_id=0, length_penalty=0.8)
    toks, scores = np.asarray(toks), np.asarray(scores)
    assert (np.diff(scores, axis=1) <= 0).all()  # best first
    for r in range(len(BOS)):
        assert len(set(strip(t, 0) for t in toks[r])) == 3  # distinct hypotheses
        assert_padded(toks[r], 0)
        for j in range(3):
            ref = seq_score(model, BOS[r], LAST0[r], strip(toks[r, j], 0), 0.8)
            np.testing.assert_allclose(scores[r, j], ref, rtol=1e-5, atol=1e-5)


def test_beam_search_unfinished_rows_end_at_max_len():
    model = Toy(6, vocab=6, max_pos=4, eos_bias=-100.0)
    toks, scores = decoding.beam_search(model.step_fn, init_cache(LAST0), jnp.asarray(BOS), max_len=4,
                                        eos_id=EOS, beam_size=2)
    assert np.isfinite(np.asarray(scores)).all()
    assert not (np.asarray(toks) == EOS).any() and not (np.asarray(toks)[:, 0] == 0).all()
    for r in range(len(BOS)):
        ref = brute_force(model, int(BOS[r]), int(LAST0[r]), 4, 0.6)
        assert strip(toks[r, 0], 0) == ref[0][1]


def test_sample_top_k_one_and_tiny_temperature_equal_greedy():
    model = Toy(7, vocab=7, max_pos=10, eos_bias=1.0)
    bos, cache = jnp.asarray(BOS), init_cache(LAST0)
    g = np.asarray(decoding.greedy(model.step_fn, cache, bos, max_len=10, eos_id=EOS))
    for seed in range(3):
        kw = dict(max_len=10, eos_id=EOS)
        np.testing.assert_array_equal(decoding.sample(model.step_fn, cache, bos, jax.random.key(seed), top_k=1,
                                                      temperature=5.0, **kw), g)
        np.testing.assert_array_equal(decoding.sample(model.step_fn, cache, bos, jax.random.key(seed),
                                                      temperature=1e-6, **kw), g)
    hot = np.asarray(decoding.sample(model.step_fn, cache, bos, jax.random.key(0), temperature=3.0, max_len=10,
                                     eos_id=EOS))
    assert not (hot == g).all()  # plain sampling is not greedy


def nucleus_probs(logits: np.ndarray, temperature: float, top_k: int, top_p: float) -> np.ndarray:
    """Reference filtered + renormalised distribution (float64)."""
    p = np.exp(log_softmax(logits / temperature))
    order = np.argsort(-p, kind="stable")
    keep = np.zeros_like(p, bool)
    keep[order[: top_k or len(p)]] = True
    p = np.where(keep, p, 0.0) / np.where(keep, p, 0.0).sum()
    mass = 0.0
    nucleus = np.zeros_like(keep)
    for i in order:
        if mass >= top_p or not keep[i]:
            break
        nucleus[i] = True
        mass += p[i]
    p = np.where(nucleus, p, 0.0)
    return p / p.sum()


@pytest.mark.parametrize("temperature,top_k,top_p", [(0.8, 0, 0.75), (1.3, 4, 0.9)])
def test_sample_first_token_matches_nucleus_distribution(temperature, top_k, top_p):
    model = Toy(8, vocab=10, max_pos=2, scale=1.0)
    n = 6000
    bos, last0 = np.full(n, 3, np.int32), np.full(n, 5, np.int32)
    out = decoding.sample(model.step_fn, init_cache(last0), jnp.asarray(bos), jax.random.key(11), max_len=1,
                          eos_id=EOS, temperature=temperature, top_k=top_k, top_p=top_p)
    freq = np.bincount(np.asarray(out)[:, 0], minlength=10) / n
    ref = nucleus_probs(model.logits(3, 5, 0), temperature, top_k, top_p)
    assert 2 <= (ref > 0).sum() < 10 - (top_k == 0) * 2  # a non-trivial nucleus
    assert (freq[ref == 0] == 0).all()
    chi2 = n * ((freq - ref)[ref > 0] ** 2 / ref[ref > 0]).sum()
    assert chi2 < 30.0, (freq, ref)  # df <= 8: p-value ~1e-4


def test_sample_top_k_stays_in_top_k():
    model = Toy(9, vocab=9, max_pos=8, eos_bias=0.5, scale=1.0)
    n = 200
    rng = np.random.RandomState(0)
    bos, last0 = rng.randint(0, 9, n).astype(np.int32), rng.randint(0, 9, n).astype(np.int32)
    out = np.asarray(decoding.sample(model.step_fn, init_cache(last0), jnp.asarray(bos), jax.random.key(3),
                                     max_len=8, eos_id=EOS, pad_id=0, top_k=3, temperature=2.0))
    assert_padded(out, 0)
    ranks = []
    for r in range(n):
        tok, last = int(bos[r]), int(last0[r])
        for t, nxt in enumerate(strip(out[r], 0)):
            top3 = np.argsort(-model.logits(tok, last, t))[:3]
            assert nxt in top3
            ranks.append(list(top3).index(nxt))
            tok, last = nxt, tok
    assert set(ranks) == {0, 1, 2}  # all three are actually used


def test_jit_matches_eager():
    model = Toy(10, vocab=7, max_pos=6, eos_bias=1.0)
    bos, cache, key = jnp.asarray(BOS), init_cache(LAST0), jax.random.key(5)
    kw = dict(max_len=6, eos_id=EOS, pad_id=0)
    g = functools.partial(decoding.greedy, model.step_fn, **kw)
    s = functools.partial(decoding.sample, model.step_fn, top_k=4, top_p=0.9, temperature=1.5, **kw)
    b = functools.partial(decoding.beam_search, model.step_fn, beam_size=3, length_penalty=0.6, **kw)
    np.testing.assert_array_equal(jax.jit(g)(cache, bos), g(cache, bos))
    np.testing.assert_array_equal(jax.jit(s)(cache, bos, key), s(cache, bos, key))
    for jitted, eager in zip(jax.jit(b)(cache, bos), b(cache, bos)):
        np.testing.assert_array_equal(jitted, eager)


def test_sample_uses_fresh_key_per_step():
    model = Toy(11, vocab=6, max_pos=6, scale=0.0)
    model.t_pos[:] = 0.0
    model.t_pos[:, EOS] = -100.0  # uniform over the other tokens: a reused key repeats the same draw
    out = np.asarray(decoding.sample(model.step_fn, init_cache(LAST0), jnp.asarray(BOS), jax.random.key(2),
                                     max_len=6, eos_id=EOS))
    assert not (out == out[:, :1]).all(axis=1).any()
