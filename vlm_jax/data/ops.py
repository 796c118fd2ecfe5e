"""Single-image ops for [H, W, 3] images on a white background (evaluation resize, normalisation) and the
emoji experiments' augmentation config; the augmentation itself is batched (`vlm_jax.data.augment`).

Colour ops can change an emoji's meaning ("red heart" vs "blue heart"), so the hue jitter is small and grayscale rare.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image


# The emoji experiments' augmentation: style changes (outlines, flat colours, jitter, blur) and zoom-out crops.
STYLE_AUGMENT: dict[str, Any] = {
    "crop": {"scale": (0.6, 1.0)}, "grayscale": 0.1,
    "jitter": {"p": 0.8, "brightness": 0.3, "contrast": 0.3, "saturation": 0.4, "hue": 0.1},
    "blur": {"p": 0.2, "sigma": (0.1, 1.0)}, "flatten": {"p": 0.2, "colors": (3, 12)},
    "outline": {"p": 0.3, "width": (1, 2)},
}


def _pil(img: np.ndarray) -> Image.Image:
    """uint8 PIL image from uint8/float input."""
    return Image.fromarray(_as_u8(img))


def _as_u8(img: np.ndarray) -> np.ndarray:
    """Round and clip to uint8."""
    return img if img.dtype == np.uint8 else np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _like(out: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Cast `out` to the dtype of `ref` (uint8 rounds and clips)."""
    if ref.dtype == np.uint8:
        return _as_u8(out)
    return np.clip(out, 0, 255).astype(ref.dtype)


def resize(img: np.ndarray, size: int) -> np.ndarray:
    """Resize to [size, size, 3] (BICUBIC, antialiased when shrinking)."""
    if img.shape[0] == size and img.shape[1] == size:
        return img
    out = np.asarray(_pil(img).resize((size, size), Image.Resampling.BICUBIC))
    return _like(out, img)


def normalize(img: np.ndarray) -> np.ndarray:
    """uint8 [0, 255] -> float32 [-1, 1]."""
    return np.asarray(img, np.float32) * np.float32(1 / 127.5) - np.float32(1.0)


