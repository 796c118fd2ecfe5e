"""NaFlex inputs (SigLIP 2): an image as a variable grid of patches at its native aspect ratio, padded to a sequence
budget. A batch is a dict of `patches` float [B, L, p·p·3] (each patch's pixels in (row, column, channel) order,
in [-1, 1]), `positions` int32 [B, L, 2] (each patch's row and column), `mask` bool [B, L] (real patches) and
`grid` int32 [B, 2] (each image's patch rows and columns). The learned position table is resized per example to
its grid, as SigLIP 2 does (bilinear, antialiased, align_corners=False: torch's `F.interpolate`)."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array
KEYS = ("patches", "positions", "mask", "grid")


def is_naflex(image: Any) -> bool:
    """Whether `image` is a NaFlex batch (a dict of KEYS) rather than an NHWC image array."""
    return isinstance(image, dict) and "patches" in image


def check(batch: dict[str, Array]) -> None:
    """A clear error for a dict that is not a NaFlex batch."""
    missing = [k for k in KEYS if k not in batch]
    if missing:
        raise ValueError(f"a NaFlex image batch needs keys {KEYS}; missing {missing}")


def resize_weights(index: Array, n_out: Array, n_in: int) -> Array:
    """[..., n_in] weights that output position `index` of a length-`n_out` axis takes from the `n_in` inputs, for
    torch's antialiased bilinear resize (align_corners=False): a triangle filter centred at (index + 0.5)·n_in/n_out,
    widened by the scale when shrinking, normalised to sum 1. Upsampling gives plain bilinear with clamped edges."""
    scale = n_in / jnp.maximum(n_out, 1).astype(jnp.float32)
    center = scale * (index.astype(jnp.float32) + 0.5)
    support = jnp.maximum(scale, 1.0)
    taps = jnp.arange(n_in, dtype=jnp.float32) + 0.5
    w = jnp.maximum(0.0, 1.0 - jnp.abs(taps - center[..., None]) / support[..., None])
    return w / jnp.maximum(w.sum(-1, keepdims=True), 1e-12)


def resized_posemb(table: Array, positions: Array, grid: Array) -> Array:
    """[B, L, D] position embeddings: the [G, G, D] `table` resized to each example's (rows, cols) `grid`, read at
    each patch's (row, column). Computed per patch, so no per-example shape is ever materialised."""
    g = table.shape[0]
    rows = resize_weights(positions[..., 0], grid[:, None, 0], g)  # [B, L, G]
    cols = resize_weights(positions[..., 1], grid[:, None, 1], table.shape[1])
    return jnp.einsum("blg,blk,gkd->bld", rows, cols, table.astype(jnp.float32))
