"""Batched, jittable autoregressive decoding: greedy, sampling (temperature / top-k / top-p) and beam search.

Model-agnostic: a model plugs in through `step_fn(tokens [N] int32, cache, position int32 scalar) ->
(logits [N, V] float32, new cache)`, where every cache leaf has leading dimension N (N = B for greedy and
sampling, B * beam_size for beam search; what is per sequence and not per beam, such as a model's cross-attention
context cache, stays in `step_fn`'s closure, never expanded or reordered). Outputs hold the generated tokens (not
`bos`) in a fixed `max_len` buffer: a row's EOS is emitted and every later position holds `pad_id`. The loops are `jax.lax.while_loop`s
that stop as soon as every row is done, so all functions jit with `step_fn`, `max_len`, `eos_id`, `pad_id` and
`beam_size` static (bind them with functools.partial).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

Array = jax.Array
StepFn = Callable[[Array, Any, Array], tuple[Array, Any]]
Chooser = Callable[[Array, Array], Array]


def _decode(step_fn: StepFn, cache: Any, bos: Array, choose: Chooser, *, max_len: int, eos_id: int,
            pad_id: int) -> Array:
    """Token-by-token loop shared by greedy and sampling; choose(logits [B, V], step) -> tokens [B]."""
    b = bos.shape[0]
    init = (jnp.int32(0), jnp.full((b, max_len), pad_id, jnp.int32), bos.astype(jnp.int32),
            jnp.zeros((b,), bool), cache)

    def cond(state: tuple) -> Array:
        """Continues while positions remain and some row has not emitted EOS."""
        i, _, _, done, _ = state
        return (i < max_len) & ~jnp.all(done)

    def body(state: tuple) -> tuple:
        """Runs one model step, picks the next tokens and writes them (pad for finished rows)."""
        i, out, cur, done, cache = state
        logits, cache = step_fn(cur, cache, i)
        tok = jnp.where(done, pad_id, choose(logits.astype(jnp.float32), i).astype(jnp.int32))
        out = jax.lax.dynamic_update_slice_in_dim(out, tok[:, None], i, axis=1)
        return i + 1, out, tok, done | (tok == eos_id), cache

    return jax.lax.while_loop(cond, body, init)[1]


def greedy(step_fn: StepFn, cache: Any, bos: Array, *, max_len: int, eos_id: int, pad_id: int = 0) -> Array:
    """Greedy (argmax) decoding; returns int32 tokens [B, max_len]."""
    choose = lambda logits, i: jnp.argmax(logits, axis=-1)
    return _decode(step_fn, cache, bos, choose, max_len=max_len, eos_id=eos_id, pad_id=pad_id)


def filter_sorted_logits(sorted_logits: Array, top_k: int | Array, top_p: float | Array) -> Array:
    """Sets descending-sorted logits outside the top-k, then outside the top-p nucleus, to -inf."""
    rank = jnp.arange(sorted_logits.shape[-1])
    logits = jnp.where((rank < top_k) | (top_k <= 0), sorted_logits, -jnp.inf)
    probs = jax.nn.softmax(logits, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    keep = (mass_before < top_p) | (top_p >= 1.0) | (rank == 0)
    return jnp.where(keep, logits, -jnp.inf)


def sample_logits(logits: Array, key: Array, *, temperature: float | Array = 1.0, top_k: int | Array = 0,
                  top_p: float | Array = 1.0) -> Array:
    """Draws one token per row from temperature-scaled, top-k / top-p filtered logits [N, V] (argmax if T <= 0)."""
    scaled = logits / jnp.where(temperature > 0, temperature, 1.0)
    order = jnp.argsort(-scaled, axis=-1, stable=True)
    sorted_logits = jnp.take_along_axis(scaled, order, axis=-1)
    idx = jax.random.categorical(key, filter_sorted_logits(sorted_logits, top_k, top_p), axis=-1)
    drawn = jnp.take_along_axis(order, idx[:, None], axis=-1)[:, 0]
    return jnp.where(temperature > 0, drawn, jnp.argmax(logits, axis=-1))


def sample(step_fn: StepFn, cache: Any, bos: Array, rng: Array, *, max_len: int, eos_id: int, pad_id: int = 0,
           temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> Array:
    """Ancestral sampling with temperature, top-k (0 = off) and top-p (1.0 = off); returns int32 [B, max_len]."""
    def choose(logits: Array, i: Array) -> Array:
        """Samples with a per-step key folded from rng and the step index."""
        key = jax.random.fold_in(rng, i)
        return sample_logits(logits, key, temperature=temperature, top_k=top_k, top_p=top_p)

    return _decode(step_fn, cache, bos, choose, max_len=max_len, eos_id=eos_id, pad_id=pad_id)


def length_norm(length: int | Array, alpha: float | Array) -> Array:
    """Wu et al. (2016) length normaliser ((5 + length) / 6) ** alpha."""
    return ((5.0 + jnp.asarray(length, jnp.float32)) / 6.0) ** alpha


def expand_cache(cache: Any, beam_size: int) -> Any:
    """Repeats every cache row beam_size times (row b -> rows b*beam_size ... b*beam_size + beam_size - 1)."""
    return jax.tree.map(lambda x: jnp.repeat(x, beam_size, axis=0), cache)


def gather_cache(cache: Any, beam_idx: Array) -> Any:
    """Reorders a [B * K]-row cache so that new beam (b, j) takes the rows of old beam (b, beam_idx[b, j]).

    Each leaf is viewed as [B, K, ...] and gathered along K within its own b, so a cache sharded over its rows
    (whole images per device) is reordered where it lies, without gathering it across devices."""
    b, k = beam_idx.shape

    def one(x: Array) -> Array:
        """One leaf, reordered within each image's K rows."""
        grouped = x.reshape(b, k, *x.shape[1:])
        idx = beam_idx.reshape(b, k, *(1,) * (x.ndim - 1))
        return jnp.take_along_axis(grouped, idx, axis=1).reshape(x.shape)

    return jax.tree.map(one, cache)


def _gather_beams(x: Array, idx: Array) -> Array:
    """Gathers x [B, M, ...] along axis 1 with idx [B, K] -> [B, K, ...]."""
    return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)


def _beams_done(i: Array, alive_logp: Array, fin_scores: Array, max_len: int, alpha: float | Array) -> Array:
    """Per row: no alive beam can still beat the worst kept finished hypothesis (log-probs only decrease)."""
    best = alive_logp[:, 0]
    bound = jnp.maximum(best / length_norm(i + 1, alpha), best / length_norm(max_len, alpha))
    return fin_scores[:, -1] >= bound


def beam_search(step_fn: StepFn, cache: Any, bos: Array, *, max_len: int, eos_id: int, beam_size: int,
                pad_id: int = 0, length_penalty: float = 0.6) -> tuple[Array, Array]:
    """Length-normalised beam search; returns best-first tokens [B, beam_size, max_len] and scores [B, beam_size]."""
    alpha = length_penalty
    b, k = bos.shape[0], beam_size
    neg = jnp.full((b, k), -jnp.inf, jnp.float32)
    init = (jnp.int32(0), jnp.full((b, k, max_len), pad_id, jnp.int32), neg.at[:, 0].set(0.0),
            jnp.repeat(bos.astype(jnp.int32)[:, None], k, axis=1), expand_cache(cache, k),
            jnp.full((b, k, max_len), pad_id, jnp.int32), neg)

    def cond(state: tuple) -> Array:
        """Continues while positions remain and some row could still improve its finished set."""
        i, _, alive_logp, _, _, _, fin_scores = state
        return (i < max_len) & ~jnp.all(_beams_done(i, alive_logp, fin_scores, max_len, alpha))

    def body(state: tuple) -> tuple:
        """Expands alive beams, merges EOS (or final-position) candidates into the finished set, reselects."""
        i, alive_seq, alive_logp, cur, cache, fin_seq, fin_scores = state
        logits, cache = step_fn(cur.reshape(-1), cache, i)
        v = logits.shape[-1]
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1).reshape(b, k, v)
        cand_logp, flat = jax.lax.top_k((alive_logp[..., None] + logp).reshape(b, k * v), min(2 * k, k * v))
        src, tok = flat // v, (flat % v).astype(jnp.int32)
        seqs = _gather_beams(alive_seq, src).at[:, :, i].set(tok)
        is_eos = tok == eos_id
        ended = is_eos | (i == max_len - 1)
        fin_cand = jnp.where(ended, cand_logp / length_norm(i + 1, alpha), -jnp.inf)
        fin_scores, top = jax.lax.top_k(jnp.concatenate([fin_scores, fin_cand], axis=1), k)
        fin_seq = _gather_beams(jnp.concatenate([fin_seq, seqs], axis=1), top)
        alive_logp, top = jax.lax.top_k(jnp.where(is_eos, -jnp.inf, cand_logp), k)
        cache = gather_cache(cache, jnp.take_along_axis(src, top, axis=1))
        return (i + 1, _gather_beams(seqs, top), alive_logp, jnp.take_along_axis(tok, top, axis=1), cache,
                fin_seq, fin_scores)

    state = jax.lax.while_loop(cond, body, init)
    return state[5], state[6]

