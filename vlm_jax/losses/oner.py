"""OneR's losses (Jang et al. 2023) on one tower's unit embeddings: image–text InfoNCE, cross-modal mixup contrast
(each pair's image and caption in one sequence, contrasted with the image and with the caption) and contextual
mixup contrast (a λ share of image i's patches with a 1 − λ share of the caption of the reversed partner, targets λ
on i and 1 − λ on the partner)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from vlm_jax.losses.contrastive import Metrics, infonce_loss as infonce
from vlm_jax.losses.mixup import mixup_infonce


def mixup_token_masks(rng: jax.Array, text_valid: jax.Array, num_patches: int,
                      lam: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Which tokens a contextual mixup sequence keeps: ([B, N] exactly round(λ·N) patches per row, drawn at random;
    [B, L] the first round((1 − λ)·n) of each caption's n tokens). `text_valid`: the (partner's) non-pad positions."""
    b = text_valid.shape[0]
    k_img = jnp.round(lam * num_patches).astype(jnp.int32)
    ranks = jnp.argsort(jax.random.uniform(rng, (b, num_patches)), axis=1).argsort(axis=1)
    keep_img = ranks < k_img
    n_txt = jnp.sum(text_valid, axis=1)
    k_txt = jnp.round((1 - lam) * n_txt).astype(jnp.int32)
    keep_txt = text_valid & (jnp.cumsum(text_valid, axis=1) <= k_txt[:, None])
    return keep_img, keep_txt


def oner_loss(zimg: jax.Array, ztxt: jax.Array, zcross: jax.Array, zmix: jax.Array, t: jax.Array, lam: jax.Array,
              cross_weight: float, mix_weight: float) -> tuple[jax.Array, Metrics]:
    """ITC(zimg, ztxt) + cross_weight · ½[ITC(zcross, zimg) + ITC(zcross, ztxt)] + mix_weight · ½[mixup ITC(zmix,
    zimg; λ) + mixup ITC(zmix, ztxt; λ)], every term symmetric InfoNCE at temperature t."""
    itc, metrics = infonce(zimg, ztxt, t)
    cross = 0.5 * (infonce(zcross, zimg, t)[0] + infonce(zcross, ztxt, t)[0])
    mix = 0.5 * (mixup_infonce(zmix, zimg, t, lam)[0] + mixup_infonce(zmix, ztxt, t, lam)[0])
    total = itc + cross_weight * cross + mix_weight * mix
    return total, dict(metrics, itc_loss=itc, xmc_loss=cross, cmc_loss=mix, mixup_lambda=lam)
