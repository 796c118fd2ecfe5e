"""OTTER (Wu et al. 2022): InfoNCE mixed with distillation towards soft image–text matches found by entropic optimal
transport over the batch.

A teacher's unit embeddings (an EMA of the student) give in-batch similarities S_vv (image–image), S_tt (text–text)
and S_vt (image–text). With the self-similarities' diagonals pushed down by `diag_penalty` (so the plan spreads
over the *other* pairs) the costs are

    C_img = −(c_v · S_vv' + c_t · S_tt' + S_vt)        C_txt = −(c_v · S_vv' + c_t · S_tt' + S_vtᵀ)

and the targets are the Sinkhorn plans of exp(−C / ε) with uniform marginals, each row normalised to sum to 1. The
loss is α · InfoNCE + (1 − α) · KL(targets ‖ softmax(t_d · S_student)), each direction averaged, with t_d a learned
distillation temperature apart from the contrastive one.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from vlm_jax.losses.contrastive import infonce_loss

Metrics = dict[str, jax.Array]


def sinkhorn(cost: jax.Array, eps: float, iterations: int) -> jax.Array:
    """The entropic transport plan [M, N] of `cost` with uniform marginals (rows sum to 1/M, columns to 1/N after
    the last step), by `iterations` alternating row and column scalings of exp(−cost / ε), in log space."""
    m, n = cost.shape
    log_q = -cost.astype(jnp.float32) / eps

    def scale(_: int, lq: jax.Array) -> jax.Array:
        lq = lq - jax.nn.logsumexp(lq, axis=1, keepdims=True) - jnp.log(m)
        return lq - jax.nn.logsumexp(lq, axis=0, keepdims=True) - jnp.log(n)

    return jnp.exp(jax.lax.fori_loop(0, iterations, scale, log_q))


def otter_targets(zimg: jax.Array, ztxt: jax.Array, *, eps: float, iterations: int, image_coef: float = 1.0,
                  text_coef: float = 1.0, diag_penalty: float = 100.0) -> tuple[jax.Array, jax.Array]:
    """(image→text targets [B, B], text→image targets [B, B]) from a teacher's unit embeddings, rows summing to 1
    (see the module docstring); no gradient flows through them."""
    zi, zt = jax.lax.stop_gradient(zimg).astype(jnp.float32), jax.lax.stop_gradient(ztxt).astype(jnp.float32)
    diag = diag_penalty * jnp.eye(zi.shape[0], dtype=jnp.float32)
    shared = image_coef * (zi @ zi.T - diag) + text_coef * (zt @ zt.T - diag)
    s_vt = zi @ zt.T
    targets = []
    for cost in (-(shared + s_vt), -(shared + s_vt.T)):
        plan = sinkhorn(cost, eps, iterations)
        targets.append(plan / jnp.sum(plan, axis=1, keepdims=True))
    return targets[0], targets[1]


def otter_loss(zimg: jax.Array, ztxt: jax.Array, t: jax.Array, t_distill: jax.Array, targets_i2t: jax.Array,
               targets_t2i: jax.Array, alpha: float) -> tuple[jax.Array, Metrics]:
    """α · InfoNCE(t) + (1 − α) · mean over both directions of KL(targets ‖ softmax(t_d · cos)) (batch mean)."""
    contrastive, metrics = infonce_loss(zimg, ztxt, t)
    sims = zimg.astype(jnp.float32) @ ztxt.astype(jnp.float32).T

    def kl(targets: jax.Array, logits: jax.Array) -> jax.Array:
        logp = jax.nn.log_softmax(t_distill * logits, axis=1)
        return jnp.mean(jnp.sum(jax.scipy.special.xlogy(targets, targets) - targets * logp, axis=1))

    kl_i2t, kl_t2i = kl(targets_i2t, sims), kl(targets_t2i, sims.T)
    distill = 0.5 * (kl_i2t + kl_t2i)
    loss = alpha * contrastive + (1.0 - alpha) * distill
    return loss, dict(metrics, infonce_loss=contrastive, distill_loss=distill, t_distill=t_distill,
                      target_diagonal=0.5 * (jnp.mean(jnp.diagonal(targets_i2t)) + jnp.mean(jnp.diagonal(targets_t2i))))
