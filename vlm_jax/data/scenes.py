"""Composed scenes: on device, each batch image shrunk and pasted at a random place over a white canvas, on top of
a shrunk partner image from the same batch, with exact boxes (LocCa's referring and grounded-captioning tasks);
on the host, labelled two-object scenes for dense probes."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
WHITE = 1.0  # images are in [-1, 1]


def _paste(canvas: Array, patch: Array, top: Array, left: Array) -> Array:
    return jax.lax.dynamic_update_slice(canvas, patch, (top, left, jnp.int32(0)))


def shrink(images: Array, size: int) -> Array:
    """Images [B, S, S, C] at size × size: the mean of each k × k block when k = S / size is whole (an exact area
    filter, without matmuls), else an antialiased linear resize."""
    b, s, _, c = images.shape
    if s % size == 0:
        k = s // size
        return images.reshape(b, size, k, size, k, c).mean(axis=(2, 4))
    return jax.image.resize(images, (b, size, size, c), "linear", antialias=True)


def compose_scenes(rng: Array, images: Array, scale: float = 0.5,
                   rows: Array | None = None) -> tuple[Array, Array, Array]:
    """(scenes [R, S, S, C], boxes [R, 4] of each scene's own image as (top, left, bottom, right) / S, partner [R])
    for the batch rows `rows` (int [R]; None: every row). Scene i shows image rows[i] (on top, never occluded) and
    image partner[i] ≠ rows[i] of the whole batch, each resized to round(scale · S)."""
    canvas, pos, partner = compose_scene_layout(rng, images, scale, rows)
    s, size = images.shape[1], max(1, int(round(scale * images.shape[1])))
    own = pos[:, 0].astype(jnp.float32)
    return canvas, jnp.concatenate([own, own + size], axis=1) / s, partner


def compose_scene_layout(rng: Array, images: Array, scale: float = 0.5,
                         rows: Array | None = None) -> tuple[Array, Array, Array]:
    """`compose_scenes` with both objects' places: (scenes [R, S, S, C], top-left pixels int [R, 2 (own, partner),
    2 (top, left)] of the round(scale · S)-pixel objects, partner [R])."""
    b, s, _, c = images.shape
    rows = jnp.arange(b) if rows is None else jnp.asarray(rows, jnp.int32)
    r = rows.shape[0]
    size = max(1, int(round(scale * s)))
    k_partner, k_pos = jax.random.split(rng)
    partner = (rows + jax.random.randint(k_partner, (r,), 1, max(b, 2))) % b
    small = shrink(images, size)
    pos = jax.random.randint(k_pos, (r, 2, 2), 0, s - size + 1)  # [scene, object (own, partner), (top, left)]
    canvas = jnp.full((r, s, s, c), WHITE, images.dtype)
    canvas = jax.vmap(_paste)(canvas, small[partner], pos[:, 1, 0], pos[:, 1, 1])
    canvas = jax.vmap(_paste)(canvas, small[rows], pos[:, 0, 0], pos[:, 0, 1])
    return canvas, pos, partner


def box_patches(top_left: Array, side: int, patch: int, grid: int) -> Array:
    """Row-major indices int [R, (side/patch)²] of the patches of a grid × grid patch grid whose centres lie in the
    side × side pixel box at `top_left` int [R, 2]; `side` a multiple of `patch`, so every box holds that many."""
    n = side // patch
    first = -(-(2 * top_left - patch) // (2 * patch))  # the first i with (i + 1/2) · patch ≥ top, exactly in integers
    first = jnp.maximum(first, 0)
    rows = first[:, 0, None] + jnp.arange(n)[None, :]
    cols = first[:, 1, None] + jnp.arange(n)[None, :]
    return (rows[:, :, None] * grid + cols[:, None, :]).reshape(top_left.shape[0], n * n)


def scenes_with_labels(objects: np.ndarray, classes: np.ndarray, count: int, size: int, grid: tuple[int, int],
                       seed: int, scale: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Host scenes for dense probes: (images float32 [count, size, size, 3] in [-1, 1], labels int [count, gh, gw]).
    Each scene pastes two distinct drawings of `objects` (uint8 [M, h, w, 3]), resized to round(scale · size), at
    random places on white, the second on top; a patch's label is the class (1 + `classes[i]`) of the topmost
    drawing whose box holds the patch centre, else 0 (background)."""
    from vlm_jax.data import ops

    rng = np.random.default_rng(seed)
    side = max(1, int(round(scale * size)))
    small = np.stack([ops.normalize(ops.resize(im, side)) for im in objects])
    gh, gw = grid
    centres_y = (np.arange(gh) + 0.5) * size / gh
    centres_x = (np.arange(gw) + 0.5) * size / gw
    images = np.full((count, size, size, 3), WHITE, np.float32)
    labels = np.zeros((count, gh, gw), np.int64)
    for n in range(count):
        for i in rng.choice(len(objects), 2, replace=False):
            top, left = rng.integers(0, size - side + 1, 2)
            images[n, top:top + side, left:left + side] = small[i]
            inside = ((centres_y >= top) & (centres_y < top + side))[:, None] & \
                     ((centres_x >= left) & (centres_x < left + side))[None, :]
            labels[n][inside] = 1 + int(classes[i])
    return images, labels
