"""Composed scenes on device: each image shrunk and pasted at a random place over a white canvas, on top of a
shrunk partner image from the same batch, with exact boxes (LocCa's referring and grounded-captioning tasks)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array
WHITE = 1.0  # images are in [-1, 1]


def _paste(canvas: Array, patch: Array, top: Array, left: Array) -> Array:
    return jax.lax.dynamic_update_slice(canvas, patch, (top, left, jnp.int32(0)))


def compose_scenes(rng: Array, images: Array, scale: float = 0.5) -> tuple[Array, Array, Array]:
    """(scenes [B, S, S, C], boxes [B, 4] of each row's own image as (top, left, bottom, right) / S, partner [B]).
    Row i shows image i (on top, never occluded) and image partner[i] ≠ i, each resized to round(scale · S)."""
    b, s, _, c = images.shape
    size = max(1, int(round(scale * s)))
    k_partner, k_pos = jax.random.split(rng)
    partner = (jnp.arange(b) + jax.random.randint(k_partner, (b,), 1, max(b, 2))) % b
    small = jax.image.resize(images, (b, size, size, c), "linear", antialias=True)
    pos = jax.random.randint(k_pos, (b, 2, 2), 0, s - size + 1)  # [row, object (own, partner), (top, left)]
    canvas = jnp.full((b, s, s, c), WHITE, images.dtype)
    canvas = jax.vmap(_paste)(canvas, small[partner], pos[:, 1, 0], pos[:, 1, 1])
    canvas = jax.vmap(_paste)(canvas, small, pos[:, 0, 0], pos[:, 0, 1])
    own = pos[:, 0].astype(jnp.float32)
    boxes = jnp.concatenate([own, own + size], axis=1) / s
    return canvas, boxes, partner
