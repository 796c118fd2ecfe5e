"""Masked-prediction pieces: patch masking and the MAE pixel loss (He et al. 2022)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def patchify(images: Array, patch: tuple[int, int]) -> Array:
    """[B, H, W, C] → [B, (H/ph)·(W/pw), ph·pw·C], patches in the ViT's row-major grid order."""
    b, h, w, c = images.shape
    ph, pw = patch
    if h % ph or w % pw:
        raise ValueError(f"image {h}×{w} does not divide into {ph}×{pw} patches")
    x = images.reshape(b, h // ph, ph, w // pw, pw, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // ph) * (w // pw), ph * pw * c)


def num_masked(num_patches: int, ratio: float) -> int:
    """Patches masked per image: round(ratio · N), leaving at least one visible."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"mask ratio must be in [0, 1), got {ratio}")
    return min(int(round(ratio * num_patches)), num_patches - 1)


def random_masking(rng: Array, batch: int, num_patches: int, ratio: float) -> tuple[Array, Array]:
    """(keep int32 [B, K] visible positions in ascending order, mask bool [B, N] True where hidden): each image
    hides exactly `num_masked(N, ratio)` patches, chosen uniformly without replacement."""
    n_keep = num_patches - num_masked(num_patches, ratio)
    noise = jax.random.uniform(rng, (batch, num_patches))
    keep = jnp.sort(jnp.argsort(noise, axis=1)[:, :n_keep], axis=1).astype(jnp.int32)
    mask = jnp.ones((batch, num_patches), bool).at[jnp.arange(batch)[:, None], keep].set(False)
    return keep, mask


def normalize_patches(patches: Array, eps: float = 1e-6) -> Array:
    """Each patch's pixels standardised by its own mean and variance (MAE's `norm_pix_loss` target)."""
    mean = jnp.mean(patches, axis=-1, keepdims=True)
    var = jnp.var(patches, axis=-1, keepdims=True)
    return (patches - mean) / jnp.sqrt(var + eps)


def masked_patch_loss(pred: Array, target: Array, mask: Array) -> tuple[Array, dict[str, Array]]:
    """Mean squared error per patch, averaged over the hidden patches only (`mask` True); float32."""
    err = jnp.mean(jnp.square(pred.astype(jnp.float32) - target.astype(jnp.float32)), axis=-1)
    weight = mask.astype(jnp.float32)
    loss = jnp.sum(err * weight) / jnp.maximum(jnp.sum(weight), 1.0)
    visible = jnp.sum(err * (1 - weight)) / jnp.maximum(jnp.sum(1 - weight), 1.0)
    return loss, {"mse_masked": loss, "mse_visible": visible, "mask_ratio": jnp.mean(weight)}
