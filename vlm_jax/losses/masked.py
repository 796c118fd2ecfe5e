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


def pixel_targets(images: Array, patch: tuple[int, int], norm_pix: bool = True) -> Array:
    """MAE's regression targets [B, N, ph·pw·C]: the patches' pixels, each patch standardised when `norm_pix`."""
    patches = patchify(images.astype(jnp.float32), patch)
    return normalize_patches(patches) if norm_pix else patches


def masked_patch_loss(pred: Array, target: Array, mask: Array) -> tuple[Array, dict[str, Array]]:
    """Mean squared error per patch, averaged over the hidden patches only (`mask` True); float32."""
    err = jnp.mean(jnp.square(pred.astype(jnp.float32) - target.astype(jnp.float32)), axis=-1)
    weight = mask.astype(jnp.float32)
    loss = jnp.sum(err * weight) / jnp.maximum(jnp.sum(weight), 1.0)
    visible = jnp.sum(err * (1 - weight)) / jnp.maximum(jnp.sum(1 - weight), 1.0)
    return loss, {"mse_masked": loss, "mse_visible": visible, "mask_ratio": jnp.mean(weight)}


def mlm_masking(rng: Array, tokens: Array, maskable: Array, mask_id: int, random_range: tuple[int, int],
                ratio: float = 0.15) -> tuple[Array, Array]:
    """BERT's masking (Devlin et al. 2019): in each row exactly max(1, round(ratio · n)) of its n `maskable`
    positions are chosen uniformly; a chosen token becomes `mask_id` with probability 0.8, a uniform random id in
    [lo, hi) with 0.1, and stays itself with 0.1. Returns (inputs, chosen bool [B, L]); rows with no maskable
    position choose none. The loss is taken on the chosen positions only."""
    k_pick, k_rule, k_rand = jax.random.split(rng, 3)
    n = jnp.sum(maskable, axis=1)
    count = jnp.where(n > 0, jnp.maximum(1, jnp.round(ratio * n)), 0).astype(jnp.int32)
    noise = jnp.where(maskable, jax.random.uniform(k_pick, tokens.shape), 2.0)  # unmaskable sort last
    rank = jnp.argsort(jnp.argsort(noise, axis=1), axis=1)
    chosen = rank < count[:, None]
    rule = jax.random.uniform(k_rule, tokens.shape)
    random_ids = jax.random.randint(k_rand, tokens.shape, random_range[0], random_range[1], tokens.dtype)
    replaced = jnp.where(rule < 0.8, jnp.asarray(mask_id, tokens.dtype), jnp.where(rule < 0.9, random_ids, tokens))
    return jnp.where(chosen, replaced, tokens), chosen


def caption_mlm(rng: Array, text: Array, special_ids: dict[str, int], vocab_size: int,
                ratio: float = 0.15) -> tuple[Array, Array]:
    """`mlm_masking` of tokenized captions: padding, EOS and BOS are never chosen, the mask id is the tokenizer's,
    random ids are its pieces [3, vocab_size)."""
    ids = special_ids
    maskable = (text != ids["pad"]) & (text != ids["eos"]) & (text != ids["bos"])
    return mlm_masking(rng, text, maskable, ids["mask"], (3, vocab_size), ratio)
