"""BLIP-2's stage-1 losses on the Q-Former's outputs (Li et al. 2023): image–text contrast scored by the best
query, and the hard negatives that image–text matching trains on."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from vlm_jax.losses.contrastive import Metrics


def query_similarity(zq: jax.Array, zt: jax.Array) -> jax.Array:
    """[B, B']: for each image (unit query embeddings [B, Q, E]) and text (unit [B', E]), the best query's cosine."""
    return jnp.max(jnp.einsum("iqe,je->ijq", zq.astype(jnp.float32), zt.astype(jnp.float32)), axis=-1)


def itc_loss(zq: jax.Array, zt: jax.Array, t: jax.Array) -> tuple[jax.Array, Metrics]:
    """Symmetric InfoNCE on t · query_similarity with the matched pairs on the diagonal."""
    logits = t * query_similarity(zq, zt)
    labels = jnp.arange(logits.shape[0])
    i2t = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits, axis=1), labels[:, None], axis=1))
    t2i = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits, axis=0), labels[None, :], axis=0))
    acc = jnp.mean((jnp.argmax(logits, axis=1) == labels).astype(jnp.float32))
    return 0.5 * (i2t + t2i), {"itc_loss": 0.5 * (i2t + t2i), "itc_acc": jax.lax.stop_gradient(acc)}


def hard_negatives(rng: jax.Array, sim: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(a negative text for each image, a negative image for each text), int32 [B] each, drawn in proportion to
    softmax(t · sim) over the batch without the matched pair (BLIP's hard-negative mining)."""
    b = sim.shape[0]
    logits = jax.lax.stop_gradient(t * sim)
    off = jnp.where(jnp.eye(b, dtype=bool), -jnp.inf, logits)
    k_text, k_image = jax.random.split(rng)
    return (jax.random.categorical(k_text, off, axis=1).astype(jnp.int32),
            jax.random.categorical(k_image, off.T, axis=1).astype(jnp.int32))
