"""Llip (Lavoie et al. 2024): an image is K visual mixture tokens, and its embedding for a caption is their
attention-pooled mixture with the caption as the query, so one image can match diverse captions.

For image i and caption j: weights w_ijk = softmax_k(⟨q_j, k_ik⟩ / τ) over the image's K mixture tokens (keys k_ik,
values v_ik, the caption's query q_j, all linear maps of the towers' outputs), the pooled embedding
z_i|j = Σ_k w_ijk v_ik normalised, and the score s_ij = ⟨z_i|j, y_j⟩ with the caption's unit embedding y_j. The
B×B scores go through SigLIP's sigmoid loss (the paper's choice) or InfoNCE.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from vlm_jax.losses.contrastive import Metrics, infonce_from_logits, sigmoid_from_logits


def mixture_weights(keys: jax.Array, query: jax.Array, tau: float) -> jax.Array:
    """w [Bi, Bt, K]: softmax over each image's K mixture tokens of ⟨query_j, key_ik⟩ / τ."""
    scores = jnp.einsum("ikd,jd->ijk", keys.astype(jnp.float32), query.astype(jnp.float32)) / tau
    return jax.nn.softmax(scores, axis=-1)


def llip_similarity(keys: jax.Array, values: jax.Array, query: jax.Array, ztxt: jax.Array,
                    tau: float) -> jax.Array:
    """s [Bi, Bt]: the cosine of every caption's unit embedding with the image's mixture pooled by that caption."""
    return _pooled_scores(keys, values, query, ztxt, tau)[0]


def _pooled_scores(keys: jax.Array, values: jax.Array, query: jax.Array, ztxt: jax.Array,
                   tau: float) -> tuple[jax.Array, jax.Array]:
    """(s [Bi, Bt], the pooling weights [Bi, Bt, K])."""
    w = mixture_weights(keys, query, tau)
    pooled = jnp.einsum("ijk,ikd->ijd", w, values.astype(jnp.float32))
    pooled = pooled * jax.lax.rsqrt(jnp.maximum(jnp.sum(pooled * pooled, axis=-1, keepdims=True), 1e-12))
    return jnp.einsum("ijd,jd->ij", pooled, ztxt.astype(jnp.float32)), w


def llip_loss(keys: jax.Array, values: jax.Array, query: jax.Array, ztxt: jax.Array, t: jax.Array,
              b: jax.Array | None, tau: float, name: str = "sigmoid") -> tuple[jax.Array, Metrics]:
    """The contrastive loss `name` (sigmoid | infonce) on logits t·s + b (b only for sigmoid) over the batch; the
    metrics add how peaked the pairs' pooling weights are (`mixture_entropy`: entropy / log K, 1 is uniform)."""
    s, w = _pooled_scores(keys, values, query, ztxt, tau)
    logits = t * s
    if name == "sigmoid":
        loss, metrics = sigmoid_from_logits(logits + b)
    elif name == "infonce":
        loss, metrics = infonce_from_logits(logits)
    else:
        raise ValueError(f"Llip's loss is 'sigmoid' or 'infonce', got {name!r}")
    pairs = jax.lax.stop_gradient(jnp.einsum("iik->ik", w))
    entropy = -jnp.sum(pairs * jnp.log(jnp.maximum(pairs, 1e-30)), axis=-1) / jnp.log(float(max(w.shape[-1], 2)))
    return loss, dict(metrics, mixture_entropy=jnp.mean(entropy))
