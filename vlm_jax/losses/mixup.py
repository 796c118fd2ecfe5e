"""ZeroVL's coin-flipping mixup (Cui et al. 2022): per batch a weight α ~ Beta(β, β) and a fair coin; heads mixes
the images with the batch in reverse order (x_i ← α x_i + (1 − α) x_{B−1−i}), tails mixes the texts' projected
embeddings the same way before they are normalised. InfoNCE's targets follow: α on the pair and 1 − α on the
reversed partner, in both directions."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from vlm_jax.losses.contrastive import Metrics


def mixup_beta(loss_cfg: dict) -> float:
    """loss.mixup_beta as the β of a symmetric Beta(β, β) mixing weight, refusing β <= 0 (no such distribution)."""
    beta = float(loss_cfg["mixup_beta"])
    if beta <= 0:
        raise ValueError(f"loss.mixup_beta must be > 0, got {beta}")
    return beta


def draw_mixup(rng: jax.Array, beta: float) -> tuple[jax.Array, jax.Array]:
    """(α ~ Beta(β, β), whether the images are mixed: True with probability 1/2, else the texts)."""
    k_alpha, k_coin = jax.random.split(rng)
    return jax.random.beta(k_alpha, beta, beta), jax.random.uniform(k_coin) > 0.5


def mix_with_reversed(x: jax.Array, alpha: jax.Array) -> jax.Array:
    """α x + (1 − α) x[::-1] along the batch axis."""
    a = alpha.astype(x.dtype)
    return a * x + (1 - a) * jnp.flip(x, axis=0)


def mixup_infonce(zimg: jax.Array, ztxt: jax.Array, t: jax.Array,
                  alpha: jax.Array) -> tuple[jax.Array, Metrics]:
    """Symmetric InfoNCE on t·zimg·ztxtᵀ with targets α on i and 1 − α on B − 1 − i (each row and each column)."""
    logits = t * jnp.einsum("id,jd->ij", zimg.astype(jnp.float32), ztxt.astype(jnp.float32))
    diag, anti = jnp.diagonal(logits), jnp.diagonal(jnp.flip(logits, axis=1))
    loss_i2t = jnp.mean(jax.nn.logsumexp(logits, axis=1) - alpha * diag - (1 - alpha) * anti)
    loss_t2i = jnp.mean(jax.nn.logsumexp(logits, axis=0) - alpha * diag - (1 - alpha) * anti)
    target = jnp.arange(logits.shape[0])
    return 0.5 * (loss_i2t + loss_t2i), {"loss/i2t": loss_i2t, "loss/t2i": loss_t2i,
                                         "acc/i2t": jnp.mean(jnp.argmax(logits, axis=1) == target),
                                         "acc/t2i": jnp.mean(jnp.argmax(logits, axis=0) == target)}
