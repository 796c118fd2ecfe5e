"""FILIP loss (Yao et al. 2021): token-wise late interaction between image patches and text tokens.

For image i (tokens x_ik) and text j (tokens y_jr), both L2-normalised by the caller, with padding masks:

    s^I[i, j] = mean_{k valid in i} max_{r valid in j} <x_ik, y_jr>    (each image token's best text token)
    s^T[i, j] = mean_{r valid in j} max_{k valid in i} <x_ik, y_jr>    (each text token's best image token)

Both matrices are indexed [image i, text j]. The loss is symmetric InfoNCE with temperature t, where the
image→text direction uses the *rows* of t·s^I and the text→image direction the *columns* of t·s^T:

    loss/i2t = mean_i( logsumexp_j t·s^I[i, j] − t·s^I[i, i] )
    loss/t2i = mean_j( logsumexp_i t·s^T[i, j] − t·s^T[j, j] )
    loss = (loss/i2t + loss/t2i) / 2

Padded tokens are excluded from both the max and the mean; every sample needs at least one valid token.
With one token per sample both matrices equal zimg·ztxtᵀ and the loss is `infonce_loss`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

Metrics = dict[str, jax.Array]


def _masked_mean(v: jax.Array, mask: jax.Array, axis: int) -> jax.Array:
    """Mean of `v` over `axis` counting only entries where `mask` holds."""
    total = jnp.sum(jnp.where(mask, v, 0.0), axis=axis)
    return total / jnp.maximum(jnp.sum(mask, axis=axis), 1).astype(v.dtype)


def _block_similarity(x: jax.Array, mx: jax.Array, y: jax.Array, my: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(s^I, s^T) [c, B] of c images (tokens x [c, Ni, D], mask mx) against all texts (y [B, Nt, D], my)."""
    sim = jnp.einsum("ikd,jrd->ijkr", x, y)  # [c, B, Ni, Nt]
    best_txt = jnp.max(jnp.where(my[None, :, None, :], sim, -jnp.inf), axis=3)  # [c, B, Ni]
    best_img = jnp.max(jnp.where(mx[:, None, :, None], sim, -jnp.inf), axis=2)  # [c, B, Nt]
    return _masked_mean(best_txt, mx[:, None, :], axis=2), _masked_mean(best_img, my[None, :, :], axis=2)


def filip_similarity(img_tokens: jax.Array, txt_tokens: jax.Array, txt_mask: jax.Array,
                     img_mask: jax.Array | None = None, *, chunk_size: int = 0) -> tuple[jax.Array, jax.Array]:
    """(s^I, s^T), both [B_img, B_txt] indexed [image, text]; images in chunks of `chunk_size` if > 0."""
    x, y = img_tokens.astype(jnp.float32), txt_tokens.astype(jnp.float32)
    mx = jnp.ones(x.shape[:2], bool) if img_mask is None else img_mask.astype(bool)
    my = txt_mask.astype(bool)
    n = x.shape[0]
    if not 0 < chunk_size < n:
        return _block_similarity(x, mx, y, my)
    if n % chunk_size:
        raise ValueError(f"chunk_size {chunk_size} must divide the batch {n}")
    k = n // chunk_size
    body = jax.checkpoint(lambda a: _block_similarity(a[0], a[1], y, my))  # recomputed in the backward pass
    s_i, s_t = lax.map(body, (x.reshape(k, chunk_size, *x.shape[1:]), mx.reshape(k, chunk_size, -1)))
    return s_i.reshape(n, -1), s_t.reshape(n, -1)


def filip_loss(img_tokens: jax.Array, txt_tokens: jax.Array, txt_mask: jax.Array, t: jax.Array,
               img_mask: jax.Array | None = None, *, chunk_size: int = 0) -> tuple[jax.Array, Metrics]:
    """Symmetric FILIP InfoNCE: i2t on the rows of t·s^I, t2i on the columns of t·s^T (see module doc)."""
    s_i, s_t = filip_similarity(img_tokens, txt_tokens, txt_mask, img_mask, chunk_size=chunk_size)
    li, lt = t * s_i, t * s_t
    target = jnp.arange(li.shape[0])
    loss_i2t = jnp.mean(jax.nn.logsumexp(li, axis=1) - jnp.diagonal(li))
    loss_t2i = jnp.mean(jax.nn.logsumexp(lt, axis=0) - jnp.diagonal(lt))
    metrics = {"loss/i2t": loss_i2t, "loss/t2i": loss_t2i,
               "acc/i2t": jnp.mean(jnp.argmax(lax.stop_gradient(li), axis=1) == target),
               "acc/t2i": jnp.mean(jnp.argmax(lax.stop_gradient(lt), axis=0) == target)}
    return 0.5 * (loss_i2t + loss_t2i), metrics
