"""PyramidCLIP's pieces (Gao et al. 2022): InfoNCE with softened targets, and object tags joined into one text."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def softened_infonce(zimg: jax.Array, ztxt: jax.Array, t: jax.Array, alpha: float) -> tuple[jax.Array, jax.Array]:
    """(loss, accuracy) of symmetric InfoNCE over t · zimg ztxtᵀ whose targets give 1 − α to the pair and α / (N − 1)
    to each of the N − 1 others (the unpaired samples' loss softened); accuracy is i2t top-1."""
    logits = t * jnp.einsum("id,jd->ij", zimg.astype(jnp.float32), ztxt.astype(jnp.float32))
    n = logits.shape[0]
    eye = jnp.eye(n, dtype=jnp.float32)
    target = (1.0 - alpha) * eye + (alpha / max(n - 1, 1)) * (1.0 - eye)
    i2t = -jnp.mean(jnp.sum(target * jax.nn.log_softmax(logits, axis=1), axis=1))
    t2i = -jnp.mean(jnp.sum(target * jax.nn.log_softmax(logits, axis=0), axis=0))
    accuracy = jnp.mean(jnp.argmax(logits, axis=1) == jnp.arange(n))
    return 0.5 * (i2t + t2i), accuracy


def join_tags(first: jax.Array, second: jax.Array, pad_id: int, eos_id: int) -> jax.Array:
    """Token rows [B, L] of two tag texts joined: `first`'s words, then `second`'s words and end (EOS, padding),
    cut at L — one text naming both objects, as a detector's tags of a scene."""
    words = jnp.sum((first != pad_id) & (first != eos_id), axis=1, keepdims=True)
    pos = jnp.arange(first.shape[1])[None, :]
    tail = jnp.take_along_axis(second, jnp.clip(pos - words, 0, first.shape[1] - 1), axis=1)
    return jnp.where(pos < words, first, tail)
