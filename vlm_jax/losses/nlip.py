"""NLIP's noise harmonisation (Huang et al. 2023), as this codebase reads it: pairs the model keeps failing to
align are likely mismatched (networks fit clean pairs before noisy ones), so each pair's noise probability is the
posterior of the high-loss component of a two-component Gaussian mixture fitted to the training pairs' loss
history, and the contrastive loss weighs each pair by 1 − that probability.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

Metrics = dict[str, jax.Array]


def gmm_noise_probability(values: jax.Array, valid: jax.Array, iterations: int) -> jax.Array:
    """float32 [N]: the posterior of the higher-mean component of a 1-D two-component Gaussian mixture fitted by EM
    (`iterations` steps, started at mean ∓ std of the valid values with equal weights) to `values` where `valid`;
    0 where not valid or when fewer than two values are valid."""
    x, w = values.astype(jnp.float32), valid.astype(jnp.float32)
    n = jnp.maximum(jnp.sum(w), 1.0)
    mean = jnp.sum(w * x) / n
    std = jnp.sqrt(jnp.sum(w * (x - mean) ** 2) / n) + 1e-6
    mu = jnp.stack([mean - std, mean + std])
    var = jnp.stack([std ** 2, std ** 2])
    pi = jnp.array([0.5, 0.5], jnp.float32)

    def responsibilities(mu: jax.Array, var: jax.Array, pi: jax.Array) -> jax.Array:
        log_p = jnp.log(pi) - 0.5 * jnp.log(2 * jnp.pi * var) - 0.5 * (x[:, None] - mu) ** 2 / var  # [N, 2]
        return jax.nn.softmax(log_p, axis=1)

    def em(_: int, state: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
        mu, var, pi = state
        r = responsibilities(mu, var, pi) * w[:, None]
        nk = jnp.sum(r, axis=0) + 1e-8
        mu = jnp.sum(r * x[:, None], axis=0) / nk
        var = jnp.sum(r * (x[:, None] - mu) ** 2, axis=0) / nk + 1e-6
        return mu, var, nk / jnp.sum(nk)

    mu, var, pi = jax.lax.fori_loop(0, iterations, em, (mu, var, pi))
    noisy = jnp.argmax(mu)
    post = responsibilities(mu, var, pi)[:, noisy]
    return jnp.where(valid & (jnp.sum(w) >= 2), post, 0.0)


def weighted_infonce(zimg: jax.Array, ztxt: jax.Array, t: jax.Array,
                     weights: jax.Array) -> tuple[jax.Array, jax.Array, Metrics]:
    """(Σ_i w_i ℓ_i / Σ_i w_i, per-pair losses ℓ [B], metrics) with ℓ_i the mean of pair i's image→text row and
    text→image column cross-entropies of CLIP's InfoNCE (logits t · cos); the weights carry no gradient."""
    logits = t * zimg.astype(jnp.float32) @ ztxt.astype(jnp.float32).T
    diag = jnp.diagonal(logits)
    per_pair = 0.5 * ((jax.nn.logsumexp(logits, axis=1) - diag) + (jax.nn.logsumexp(logits, axis=0) - diag))
    w = jax.lax.stop_gradient(weights.astype(jnp.float32))
    loss = jnp.sum(w * per_pair) / jnp.maximum(jnp.sum(w), 1e-6)
    target = jnp.arange(logits.shape[0])
    metrics = {"acc/i2t": jnp.mean(jnp.argmax(logits, axis=1) == target),
               "acc/t2i": jnp.mean(jnp.argmax(logits, axis=0) == target), "infonce_loss": jnp.mean(per_pair)}
    return loss, per_pair, metrics
