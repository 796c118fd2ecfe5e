"""Image–text matching (ALBEF, Li et al. 2021): hard negatives drawn from the in-batch contrastive similarities."""
from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def negative_weights(sim: Array, logit_scale: Array | float, labels: Array | None = None) -> Array:
    """[B, B] sampling distribution per row: softmax over the other columns of the contrastive logits
    `logit_scale` · `sim` (ALBEF's sim / τ, with t = 1/τ the contrastive loss's scale: raw cosines in [−1, 1] would
    make the draw near-uniform); the row's own column (and with `labels` [B], every column sharing its label:
    another caption of the same concept is no negative) gets probability 0. A row with no candidate gets uniform
    weights over the others."""
    b = sim.shape[0]
    excluded = jnp.eye(b, dtype=bool)
    if labels is not None:
        excluded = excluded | (labels[:, None] == labels[None, :])
    logits = jnp.where(excluded, -jnp.inf, jnp.asarray(logit_scale, jnp.float32) * sim.astype(jnp.float32))
    none_left = jnp.all(excluded, axis=1, keepdims=True)
    logits = jnp.where(none_left, jnp.where(jnp.eye(b, dtype=bool), -jnp.inf, 0.0), logits)
    return jax.nn.softmax(logits, axis=1)


def sample_hard_negatives(rng: Array, sim: Array, logit_scale: Array | float,
                          labels: Array | None = None) -> tuple[Array, Array]:
    """(negative text index per image, negative image index per text), each drawn from `negative_weights` of the
    image→text and text→image similarities `sim` [B_img, B_txt] at the contrastive `logit_scale` t (gradients of
    both stopped)."""
    sim, scale = jax.lax.stop_gradient(sim), jax.lax.stop_gradient(logit_scale)
    k_t, k_i = jax.random.split(rng)
    draw = lambda key, w: jax.random.categorical(key, jnp.log(w), axis=1)  # noqa: E731
    return draw(k_t, negative_weights(sim, scale, labels)), draw(k_i, negative_weights(sim.T, scale, labels))


def itm_loss(logits: Array, match: Array) -> tuple[Array, dict[str, Array]]:
    """Mean two-way cross-entropy of match logits [N, 2] (column 1: match) against bool `match` [N]."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    target = match.astype(jnp.int32)
    loss = -jnp.mean(jnp.take_along_axis(logp, target[:, None], axis=1))
    acc = jnp.mean((jnp.argmax(logp, axis=-1) == target).astype(jnp.float32))
    return loss, {"itm_loss": loss, "itm_accuracy": jax.lax.stop_gradient(acc)}
