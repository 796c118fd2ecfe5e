"""Numpy/PIL image ops for [H, W, 3] images on a white background.

Every op takes uint8 (or float in [0, 255]) and returns the same dtype and shape (except `resize`,
`random_resized_crop` and `normalize`). Random ops draw only from the `np.random.Generator` they are given.
Colour ops can change an emoji's meaning ("red heart" vs "blue heart"), so hue and grayscale are off by default.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image, ImageFilter

_LUMA = np.array([0.299, 0.587, 0.114], np.float32)

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


def hflip(img: np.ndarray) -> np.ndarray:
    """Mirror left-right (changes flags and text: off by default)."""
    return img[:, ::-1].copy()


def random_resized_crop(
    img: np.ndarray,
    rng: np.random.Generator,
    size: int,
    scale: tuple[float, float] = (0.5, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    fill: int = 255,
) -> np.ndarray:
    """Crop a box of area scale*H*W (scale > 1 zooms out, padding with `fill`) and resize to `size`."""
    h, w = img.shape[:2]
    s = rng.uniform(*scale)
    r = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
    cw, ch = w * np.sqrt(s * r), h * np.sqrt(s / r)
    x0 = rng.uniform(min(0.0, w - cw), max(0.0, w - cw))
    y0 = rng.uniform(min(0.0, h - ch), max(0.0, h - ch))
    pil = _pil(img)
    pad = int(np.ceil(max(-x0, -y0, x0 + cw - w, y0 + ch - h, 0.0)))
    if pad:
        canvas = Image.new("RGB", (w + 2 * pad, h + 2 * pad), (fill,) * 3)
        canvas.paste(pil, (pad, pad))
        pil, x0, y0 = canvas, x0 + pad, y0 + pad
    out = pil.resize((size, size), Image.Resampling.BILINEAR, box=(x0, y0, x0 + cw, y0 + ch))
    return _like(np.asarray(out), img)


def grayscale(img: np.ndarray) -> np.ndarray:
    """Luma (BT.601) copied to all three channels."""
    y = np.asarray(img, np.float32) @ _LUMA
    return _like(np.repeat(y[..., None], 3, axis=-1), img)


def color_jitter(
    img: np.ndarray,
    rng: np.random.Generator,
    brightness: float = 0.0,
    contrast: float = 0.0,
    saturation: float = 0.0,
    hue: float = 0.0,
) -> np.ndarray:
    """Random brightness/contrast/saturation factors in [1-x, 1+x], then hue shift in [-hue, hue] turns."""
    x = np.asarray(img, np.float32)
    fb, fc, fs = (rng.uniform(1 - a, 1 + a) for a in (brightness, contrast, saturation))
    dh = rng.uniform(-hue, hue)
    if brightness:
        x = np.clip(x * fb, 0, 255)
    if contrast:
        x = np.clip((x - (x @ _LUMA).mean()) * fc + (x @ _LUMA).mean(), 0, 255)
    if saturation:
        gray = (x @ _LUMA)[..., None]
        x = np.clip(gray + (x - gray) * fs, 0, 255)
    if hue:
        hsv = np.asarray(Image.fromarray(_as_u8(x)).convert("HSV")).copy()
        hsv[..., 0] = (hsv[..., 0].astype(np.int32) + int(round(dh * 256))) % 256
        x = np.asarray(Image.fromarray(hsv, "HSV").convert("RGB"), np.float32)
    return _like(x, img)


def gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur with standard deviation `sigma` pixels."""
    return _like(np.asarray(_pil(img).filter(ImageFilter.GaussianBlur(radius=sigma))), img)


def flatten_colors(img: np.ndarray, colors: int) -> np.ndarray:
    """Quantise to a palette of `colors` flat colours (median cut), like flat-shaded emoji styles."""
    q = _pil(img).quantize(colors=colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    return _like(np.asarray(q.convert("RGB")), img)


def foreground_mask(img: np.ndarray, threshold: int = 16) -> np.ndarray:
    """Pixels that differ from the white background by more than `threshold` in any channel."""
    return np.asarray(img).min(axis=-1) < 255 - threshold


def _dilate(mask: np.ndarray, r: int) -> np.ndarray:
    """Binary dilation with a (2r+1)^2 square (separable shifts)."""
    for axis in (0, 1):
        for _ in range(r):
            m = mask.copy()
            if axis == 0:
                m[1:] |= mask[:-1]
                m[:-1] |= mask[1:]
            else:
                m[:, 1:] |= mask[:, :-1]
                m[:, :-1] |= mask[:, 1:]
            mask = m
    return mask


def outline(img: np.ndarray, width: int = 1, inner: bool = True, edge_threshold: float = 64.0) -> np.ndarray:
    """Draw a black outline around the foreground (and, if `inner`, along strong colour edges), OpenMoji-like."""
    mask = foreground_mask(img)
    line = _dilate(mask, (width + 1) // 2) & _dilate(~mask, width // 2)  # outer ring + inner ring
    if inner:
        x = np.asarray(img, np.int16)
        edge = np.zeros(mask.shape, bool)
        edge[:, :-1] |= np.abs(x[:, 1:] - x[:, :-1]).max(-1) > edge_threshold
        edge[:-1] |= np.abs(x[1:] - x[:-1]).max(-1) > edge_threshold
        line |= _dilate(edge & mask, (width - 1) // 2)
    out = np.array(img, copy=True)
    out[line] = 0
    return out


def _range(v: Any) -> tuple[float, float]:
    """Scalar or (lo, hi) -> (lo, hi)."""
    return (float(v), float(v)) if np.isscalar(v) else (float(v[0]), float(v[1]))


def augment(img: np.ndarray, rng: np.random.Generator, cfg: dict[str, Any], size: int) -> np.ndarray:
    """crop/resize, flip, flatten, outline (on the white background), jitter, grayscale, blur; {} = resize only."""
    if "crop" in cfg:
        c = cfg["crop"]
        scale, ratio = tuple(c.get("scale", (0.5, 1.0))), tuple(c.get("ratio", (3 / 4, 4 / 3)))
        img = random_resized_crop(img, rng, size, scale, ratio)
    else:
        img = resize(img, size)
    if "flip" in cfg and rng.random() < cfg["flip"]:
        img = hflip(img)
    if "flatten" in cfg and rng.random() < cfg["flatten"].get("p", 1.0):
        lo, hi = _range(cfg["flatten"].get("colors", (3, 12)))
        img = flatten_colors(img, int(rng.integers(lo, hi + 1)))
    if "outline" in cfg and rng.random() < cfg["outline"].get("p", 1.0):
        lo, hi = _range(cfg["outline"].get("width", 1))
        img = outline(img, int(rng.integers(lo, hi + 1)), cfg["outline"].get("inner", True))
    if "jitter" in cfg and rng.random() < cfg["jitter"].get("p", 1.0):
        j = cfg["jitter"]
        strengths = (j.get(k, 0.0) for k in ("brightness", "contrast", "saturation", "hue"))
        img = color_jitter(img, rng, *strengths)
    if "grayscale" in cfg and rng.random() < cfg["grayscale"]:
        img = grayscale(img)
    if "blur" in cfg and rng.random() < cfg["blur"].get("p", 1.0):
        img = gaussian_blur(img, rng.uniform(*_range(cfg["blur"].get("sigma", (0.1, 1.0)))))
    return img
