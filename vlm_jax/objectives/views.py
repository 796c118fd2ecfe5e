"""Extra image views made on the device inside a loss: random square crops at a lower resolution (SigLIP 2's SILC
local views, KELIP's multi-crop), and the patch grids they imply."""
from __future__ import annotations

import jax


def random_crops(rng: jax.Array, images: jax.Array, fraction: float, size: int) -> jax.Array:
    """A square crop of `fraction` of the side at a random place in each image, at `size` × `size` pixels (resized
    only when the crop has another size)."""
    b, s, _, c = images.shape
    side = max(1, int(round(fraction * s)))
    top_left = jax.random.randint(rng, (b, 2), 0, s - side + 1)
    crop = jax.vmap(lambda im, p: jax.lax.dynamic_slice(im, (p[0], p[1], 0), (side, side, c)))(images, top_left)
    return crop if side == size else jax.image.resize(crop, (b, size, size, c), "linear", antialias=True)


def resized_crops(rng: jax.Array, images: jax.Array, fraction: float) -> jax.Array:
    """A random square crop of `fraction` of each image's side, scaled back to the image's size by nearest
    neighbour (no interpolation matmuls), and flipped left–right with probability 1/2 (a second view)."""
    b, s, _, c = images.shape
    k_crop, k_flip = jax.random.split(rng)
    crops = random_crops(k_crop, images, fraction, max(1, int(round(fraction * s))))
    crops = crops if crops.shape[1] == s else jax.image.resize(crops, (b, s, s, c), "nearest")
    flip = jax.random.bernoulli(k_flip, 0.5, (b, 1, 1, 1))
    return jax.numpy.where(flip, crops[:, :, ::-1], crops)


def local_geometry(image_size: int, patch: tuple[int, int], local_size: float,
                   key: str = "loss.local_size") -> tuple[tuple[int, int], int, tuple[int, int]]:
    """(the input's patch grid, the local views' side in pixels, their patch grid) for views `local_size` of the
    input side; raises naming `key` unless the side is a positive multiple of the patch size."""
    grid = (image_size // patch[0], image_size // patch[1])
    side = int(round(float(local_size) * image_size))
    if side < max(patch) or any(side % p for p in patch):
        raise ValueError(f"{key} {local_size} gives {side}-pixel local views of the {image_size}-pixel input: their "
                         f"side must be a positive multiple of the patch size {patch} "
                         f"(e.g. {key.split('.')[-1]}={max(patch) * max(1, image_size // 2 // max(patch)) / image_size})")
    return grid, side, (side // patch[0], side // patch[1])
