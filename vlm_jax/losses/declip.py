"""DeCLIP's extra supervision (Li et al. 2022): SimSiam between two image views, nearest-neighbour text positives
from a FIFO queue of past text embeddings, and random word deletion as a second text view (EDA's deletion)."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def _unit(x: jax.Array) -> jax.Array:
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-12))


def simsiam_loss(p1: jax.Array, z1: jax.Array, p2: jax.Array, z2: jax.Array) -> jax.Array:
    """−½ (cos(p1, sg z2) + cos(p2, sg z1)), averaged over the batch (Chen & He 2021)."""
    sg = jax.lax.stop_gradient
    return -0.5 * (jnp.mean(jnp.sum(_unit(p1) * _unit(sg(z2)), -1)) + jnp.mean(jnp.sum(_unit(p2) * _unit(sg(z1)), -1)))


def nearest_neighbours(queries: jax.Array, queue: jax.Array, filled: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(the queue row most similar to each query [B, D], its index [B]) among the first `filled` rows (a FIFO queue
    fills from row 0 and stays full once it has wrapped)."""
    sims = jnp.einsum("bd,kd->bk", queries.astype(jnp.float32), queue.astype(jnp.float32))
    sims = jnp.where(jnp.arange(queue.shape[0])[None, :] < filled, sims, -jnp.inf)
    idx = jnp.argmax(sims, axis=1)
    return queue[idx], idx


def enqueue(queue: jax.Array, pointer: jax.Array, filled: jax.Array,
            rows: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(queue, pointer, filled) after writing `rows` at the pointer (wrapping): the queue keeps the last K rows, the
    oldest where the pointer now is."""
    k, b = queue.shape[0], rows.shape[0]
    positions = (pointer + jnp.arange(b)) % k
    queue = queue.at[positions].set(rows.astype(queue.dtype))
    return queue, (pointer + b) % k, jnp.minimum(filled + b, k)


def delete_tokens(rng: jax.Array, tokens: jax.Array, pad_id: int, keep_ids: tuple[int, ...],
                  rate: float) -> jax.Array:
    """Each token that is neither padding nor one of `keep_ids` (BOS / EOS) dropped with probability `rate`; the
    rest close up in order and the tail is padded."""
    protected = jnp.isin(tokens, jnp.asarray(keep_ids, tokens.dtype)) if keep_ids else jnp.zeros(tokens.shape, bool)
    keep = (tokens != pad_id) & (protected | (jax.random.uniform(rng, tokens.shape) >= rate))
    order = jnp.argsort(~keep, axis=1, stable=True)
    moved = jnp.take_along_axis(tokens, order, axis=1)
    return jnp.where(jnp.arange(tokens.shape[1])[None, :] < jnp.sum(keep, axis=1, keepdims=True), moved,
                     jnp.asarray(pad_id, tokens.dtype))
