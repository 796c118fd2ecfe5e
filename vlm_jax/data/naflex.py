"""NaFlex preprocessing (SigLIP 2): an image resized, keeping its aspect ratio, to the largest patch grid within a
sequence budget, cut into patches with each patch's (row, column), padded to the budget with a mask. The model
side (the batch layout, the per-example position resize) is `vlm_jax.models.naflex`."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from PIL import Image

MAX_SCALE = 100.0  # SigLIP 2's search range tops out at 100x: a 1 px image becomes ceil(100 / patch) patches


def grid_for(height: int, width: int, patch: int, budget: int) -> tuple[int, int]:
    """(rows, cols) of the largest grid within `budget` patches for an image of this size at a common scale s:
    rows = max(1, ceil(height·s / patch)), cols likewise. The patch count only grows with s and changes just past
    s = k·patch / side, so the largest feasible s is one of those points (or the 100x cap): try them all."""
    if budget < 1 or patch < 1 or height < 1 or width < 1:
        raise ValueError(f"NaFlex needs positive sizes and budget, got {height}x{width}, patch {patch}, "
                         f"budget {budget}")

    def cells(s: float) -> tuple[int, int]:
        return max(1, math.ceil(height * s / patch - 1e-9)), max(1, math.ceil(width * s / patch - 1e-9))

    candidates = {MAX_SCALE}
    for side in (height, width):
        candidates.update(k * patch / side for k in range(1, budget + 1) if k * patch / side <= MAX_SCALE)
    best = (1, 1)
    for s in sorted(candidates):
        r, c = cells(s)
        if r * c <= budget:
            best = (r, c)
    return best


def patchify(image: np.ndarray, patch: int, budget: int) -> dict[str, np.ndarray]:
    """One uint8 [H, W, 3] image → NaFlex arrays padded to `budget`: patches uint8 [budget, patch·patch·3] (pixels
    in row, column, channel order; zeros where padded), positions int32 [budget, 2], mask bool [budget], grid int32
    [2]. Resized with PIL's bilinear filter (antialiased when shrinking), as SigLIP 2's processor does."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"NaFlex patchify needs an [H, W, 3] image, got shape {image.shape}")
    rows, cols = grid_for(image.shape[0], image.shape[1], patch, budget)
    size = (cols * patch, rows * patch)
    if (image.shape[1], image.shape[0]) != size:
        image = np.asarray(Image.fromarray(image.astype(np.uint8)).resize(size, Image.Resampling.BILINEAR))
    cut = image.reshape(rows, patch, cols, patch, 3).transpose(0, 2, 1, 3, 4).reshape(rows * cols, -1)
    n = rows * cols
    patches = np.zeros((budget, patch * patch * 3), np.uint8)
    patches[:n] = cut
    positions = np.zeros((budget, 2), np.int32)
    idx = np.arange(n)
    positions[:n, 0], positions[:n, 1] = idx // cols, idx % cols
    mask = np.arange(budget) < n
    return dict(patches=patches, positions=positions, mask=mask, grid=np.array([rows, cols], np.int32))


def batch(images: Sequence[np.ndarray], patch: int, budget: int) -> dict[str, np.ndarray]:
    """A list of uint8 images (any sizes) as one NaFlex batch (leading axis N)."""
    parts = [patchify(im, patch, budget) for im in images]
    return {k: np.stack([p[k] for p in parts]) for k in parts[0]}


def to_unit_range(patches: np.ndarray) -> np.ndarray:
    """uint8 patch pixels → float32 in [-1, 1] (the codebase's x / 127.5 − 1)."""
    return patches.astype(np.float32) * np.float32(1 / 127.5) - np.float32(1.0)
