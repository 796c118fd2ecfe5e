"""Batched image augmentation: parameters drawn per example, pixels transformed a batch at a time.

Per-example PIL calls cost ~0.4 ms per 32 px emoji (Python and PIL object overhead, not arithmetic), which kept the
input pipeline barely ahead of the train step. Here each example only draws a small parameter vector from its own
rng (`draw`); `apply` then transforms a whole batch with a few numpy array ops and batched matmuls:

- crop + resize: PIL's resampling coefficients (bilinear for crops, bicubic for a plain resize, antialiased
  when shrinking), as two batched matmuls; boxes past the border see a white canvas (zoom out);
- flip, outline (black contour of the non-white foreground, optionally along strong colour edges), colour jitter
  (brightness, contrast, saturation, hue rotation of the YIQ chroma plane), grayscale and Gaussian blur (edge-clamped) as array ops;
- flat colours (median-cut palette) stay a per-example PIL call: it is drawn for a minority of examples.

`collate` is the grain batch function: elements that carry "augment" parameters get their "image" transformed
(grouped by source shape), normalised to float32 [-1, 1], and every other field is stacked.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

_LUMA = np.array([0.299, 0.587, 0.114], np.float32)
PARAMS = ("x0", "y0", "w", "h", "flip", "colors", "outline", "jitter", "brightness", "contrast", "saturation",
          "hue", "gray", "blur")
P = {name: i for i, name in enumerate(PARAMS)}  # column of each parameter in a [b, len(PARAMS)] array


def _range(v: Any) -> tuple[float, float]:
    """Scalar or (lo, hi) -> (lo, hi)."""
    return (float(v), float(v)) if np.isscalar(v) else (float(v[0]), float(v[1]))


def draw(rng: np.random.Generator, cfg: dict[str, Any], shape: Sequence[int]) -> np.ndarray:
    """One example's augmentation parameters (float64 [len(PARAMS)]) for a source image of `shape` [H, W, ...].

    `cfg` keys (each optional; {} = resize only): crop {scale, ratio}, flip p, flatten {p, colors}, outline
    {p, width, inner}, jitter {p, brightness, contrast, saturation, hue}, grayscale p, blur {p, sigma}.
    """
    h, w = shape[:2]
    u = iter(rng.random(20).tolist())  # one rng call: every draw below reads the next uniform in [0, 1)
    between = lambda lo, hi: lo + (hi - lo) * next(u)  # noqa: E731
    p = dict(x0=0.0, y0=0.0, w=w, h=h, brightness=1.0, contrast=1.0, saturation=1.0)
    if "crop" in cfg:
        c = cfg["crop"]
        scale, ratio = _range(c.get("scale", (0.5, 1.0))), _range(c.get("ratio", (3 / 4, 4 / 3)))
        s = between(*scale)
        r = math.exp(between(math.log(ratio[0]), math.log(ratio[1])))
        cw, ch = w * math.sqrt(s * r), h * math.sqrt(s / r)
        p.update(x0=between(min(0.0, w - cw), max(0.0, w - cw)), y0=between(min(0.0, h - ch), max(0.0, h - ch)),
                 w=cw, h=ch)
    if "flip" in cfg and next(u) < cfg["flip"]:
        p["flip"] = 1
    if "flatten" in cfg and next(u) < cfg["flatten"].get("p", 1.0):
        lo, hi = _range(cfg["flatten"].get("colors", (3, 12)))
        p["colors"] = math.floor(between(lo, hi + 1))
    if "outline" in cfg and next(u) < cfg["outline"].get("p", 1.0):
        lo, hi = _range(cfg["outline"].get("width", 1))
        p["outline"] = math.floor(between(lo, hi + 1))
    if "jitter" in cfg and next(u) < cfg["jitter"].get("p", 1.0):
        j = cfg["jitter"]
        p["jitter"] = 1
        for k in ("brightness", "contrast", "saturation"):
            p[k] = between(1 - j.get(k, 0.0), 1 + j.get(k, 0.0))
        p["hue"] = between(-j.get("hue", 0.0), j.get("hue", 0.0))
    if "grayscale" in cfg and next(u) < cfg["grayscale"]:
        p["gray"] = 1
    if "blur" in cfg and next(u) < cfg["blur"].get("p", 1.0):
        p["blur"] = between(*_range(cfg["blur"].get("sigma", (0.1, 1.0))))
    return np.array([p.get(k, 0.0) for k in PARAMS])


# ------------------------------------------------------------------------------------------- resampling

def _bilinear(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    return np.where(x < 1, 1 - x, 0.0)


def _bicubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1, near, np.where(x < 2, far, 0.0))


FILTERS: dict[str, tuple[Callable[[np.ndarray], np.ndarray], float]] = {
    "bilinear": (_bilinear, 1.0), "bicubic": (_bicubic, 2.0)}  # kernel, support


def resample_weights(start: np.ndarray, length: np.ndarray, pad: np.ndarray, in_size: int, out_size: int,
                     kind: str) -> tuple[np.ndarray, np.ndarray]:
    """PIL's resampling coefficients for boxes [start, start + length) of a 1-D axis of `in_size` pixels padded by
    `pad` white pixels each side: (float32 weights on the image pixels [b, out, in], weight on the padding [b, out])."""
    kernel, support = FILTERS[kind]
    scale = (length / out_size)[:, None]
    filterscale = np.maximum(scale, 1.0)
    center = start[:, None] + (np.arange(out_size) + 0.5) * scale  # [b, out]
    lim = pad[:, None]
    lo = np.maximum(np.floor(center - support * filterscale + 0.5 + lim), 0) - lim  # PIL: int() on canvas coords
    hi = np.minimum(np.floor(center + support * filterscale + 0.5 + lim), in_size + 2 * lim) - lim
    taps = int((hi - lo).max())
    j = lo[..., None] + np.arange(taps)  # [b, out, taps]: the source pixels each output reads
    w = np.where(j < hi[..., None], kernel((j - center[..., None] + 0.5) / filterscale[..., None]), 0.0)
    w /= w.sum(-1, keepdims=True)
    inside = (j >= 0) & (j < in_size)
    w_in = np.zeros(w.shape[:2] + (in_size + 1,), np.float32)  # column in_size: a sink for the padding's taps
    np.put_along_axis(w_in, np.where(inside, j, in_size).astype(np.int64), np.where(inside, w, 0.0), axis=-1)
    return w_in[..., :in_size], np.where(inside, 0.0, w).sum(-1)


def _separable(x: np.ndarray, wy: np.ndarray, wx: np.ndarray) -> np.ndarray:
    """out[b, c, o, p] = Σ_ij wy[b, o, i] x[b, c, i, j] wx[b, p, j] for channel-first x: two batched matmuls."""
    return np.matmul(wy[:, None], np.matmul(x, wx.transpose(0, 2, 1)[:, None]))


def out_shape(size: int | tuple[int, int]) -> tuple[int, int]:
    """(height, width) of an output `size`: an int (square) or a (height, width) pair (NaFlex grids)."""
    return (int(size), int(size)) if np.isscalar(size) else (int(size[0]), int(size[1]))


def crop_resize(images: np.ndarray, params: np.ndarray, size: int | tuple[int, int], kind: str) -> np.ndarray:
    """float32 channel-first [b, 3, out_h, out_w]: each uint8 [b, H, W, 3] image's box (x0, y0, w, h) resized to
    `size` (int: square; (height, width)), white outside the image."""
    out_h, out_w = out_shape(size)
    b, h, w = images.shape[:3]
    x0, y0, cw, ch = (params[:, P[k]] for k in ("x0", "y0", "w", "h"))
    pad = np.ceil(np.maximum.reduce([-x0, -y0, x0 + cw - w, y0 + ch - h, np.zeros(b)]))
    wx, white_x = resample_weights(x0, cw, pad, w, out_w, kind)
    wy, white_y = resample_weights(y0, ch, pad, h, out_h, kind)
    # as PIL: the horizontal pass first, over a white canvas, rounded to 8 bits; then the vertical pass
    t = np.matmul(images.transpose(0, 3, 1, 2).astype(np.float32), wx.transpose(0, 2, 1)[:, None])
    t = np.clip(np.rint(t + (255 * white_x)[:, None, None, :].astype(np.float32)), 0, 255)
    return np.matmul(wy[:, None], t) + (255 * white_y)[:, None, :, None].astype(np.float32)


# ------------------------------------------------------------------------------- pixel ops (channel-first)

def luma(x: np.ndarray) -> np.ndarray:
    """[b, 3, H, W] -> [b, 1, H, W] BT.601 luma."""
    return (_LUMA[0] * x[:, 0] + _LUMA[1] * x[:, 1] + _LUMA[2] * x[:, 2])[:, None]


def foreground(x: np.ndarray, threshold: float = 16) -> np.ndarray:
    """[b, H, W] pixels of [b, 3, H, W] that differ from the white background by more than `threshold`."""
    return x.min(axis=1) < 255 - threshold


def dilate(mask: np.ndarray, r: int) -> np.ndarray:
    """Binary dilation of [..., H, W] masks with a (2r+1)² square (separable shifts)."""
    for axis in (-2, -1):
        for _ in range(r):
            m = mask.copy()
            lead = (slice(None),) * (mask.ndim + axis)
            m[lead + (slice(1, None),)] |= mask[lead + (slice(None, -1),)]
            m[lead + (slice(None, -1),)] |= mask[lead + (slice(1, None),)]
            mask = m
    return mask


def outline(x: np.ndarray, width: int, inner: bool = True, edge_threshold: float = 64.0) -> np.ndarray:
    """Black outline around the foreground of [n, 3, H, W] images (and along strong colour edges if `inner`)."""
    mask = foreground(x)
    line = dilate(mask, (width + 1) // 2) & dilate(~mask, width // 2)  # outer ring + inner ring
    if inner:
        edge = np.zeros(mask.shape, bool)
        edge[..., :, :-1] |= np.abs(x[..., :, 1:] - x[..., :, :-1]).max(1) > edge_threshold
        edge[..., :-1, :] |= np.abs(x[..., 1:, :] - x[..., :-1, :]).max(1) > edge_threshold
        line |= dilate(edge & mask, (width - 1) // 2)
    return np.where(line[:, None], np.float32(0), x)


_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def hue_matrices(turns: np.ndarray) -> np.ndarray:
    """[n, 3, 3] RGB operators rotating the chroma plane (I, Q of YIQ) by `turns`; luma is unchanged."""
    c, s = np.cos(2 * np.pi * turns), np.sin(2 * np.pi * turns)
    rot = np.zeros((len(turns), 3, 3))
    rot[:, 0, 0], rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = 1, c, -s, s, c
    return (np.linalg.inv(_YIQ) @ rot @ _YIQ).astype(np.float32)


def jitter(x: np.ndarray, params: np.ndarray) -> np.ndarray:
    """Brightness, contrast (about the mean luma), saturation (about the pixel's luma), then hue rotation."""
    col = lambda k: params[:, P[k]].astype(np.float32)[:, None, None, None]  # noqa: E731
    x = np.clip(x * col("brightness"), 0, 255)
    mean = luma(x).mean(axis=(1, 2, 3))[:, None, None, None]
    x = np.clip((x - mean) * col("contrast") + mean, 0, 255)
    gray = luma(x)
    x = np.clip(gray + (x - gray) * col("saturation"), 0, 255)
    hue = params[:, P["hue"]]
    if hue.any():
        n, c, h, w = x.shape
        x = np.clip(np.matmul(hue_matrices(hue), x.reshape(n, c, h * w)).reshape(x.shape), 0, 255)
    return x.astype(np.float32)


def blur_matrices(sigma: np.ndarray, size: int) -> np.ndarray:
    """[n, size, size] 1-D Gaussian blur operators (std `sigma` pixels, truncated at 3σ, edges clamped)."""
    radius = int(np.ceil(3 * sigma.max()))
    k = np.arange(-radius, radius + 1)
    g = np.where(np.abs(k) <= np.ceil(3 * sigma)[:, None], np.exp(-0.5 * (k / sigma[:, None]) ** 2), 0.0)
    g /= g.sum(-1, keepdims=True)  # each example's own 3σ support: its result does not depend on the batch
    m = np.zeros((len(sigma), size, size))
    rows = np.arange(size)
    for t, off in enumerate(k):
        m[:, rows, np.clip(rows + off, 0, size - 1)] += g[:, t:t + 1]
    return m.astype(np.float32)


def flatten_colors(img: np.ndarray, colors: int) -> np.ndarray:
    """Quantise a uint8 [H, W, 3] image to a palette of `colors` flat colours (median cut)."""
    q = Image.fromarray(img).quantize(colors=colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    return np.asarray(q.convert("RGB"))


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def apply(images: np.ndarray, params: np.ndarray, cfg: dict[str, Any], size: int | tuple[int, int],
          kind: str | None = None) -> np.ndarray:
    """uint8 [b, out_h, out_w, 3] (`size`: int for a square, or (height, width)): the augmentation `params` (rows of
    `draw`) applied to uint8 [b, H, W, 3] sources, in the order crop/resize, flip, flatten, outline, jitter,
    grayscale, blur. `kind`: the resampling filter (default bilinear for crops, bicubic for a plain resize)."""
    out_h, out_w = out_shape(size)
    if "crop" not in cfg and images.shape[1:3] == (out_h, out_w):
        x = images.transpose(0, 3, 1, 2).astype(np.float32)  # a plain resize to the same size is the identity
    else:
        x = crop_resize(images, params, size, kind or ("bilinear" if "crop" in cfg else "bicubic"))
    flip = np.flatnonzero(params[:, P["flip"]])
    x[flip] = x[flip, :, :, ::-1]
    for i in np.flatnonzero(params[:, P["colors"]]):
        x[i] = flatten_colors(_u8(x[i].transpose(1, 2, 0)), int(params[i, P["colors"]])).transpose(2, 0, 1)
    inner = cfg["outline"].get("inner", True) if "outline" in cfg else True
    widths = params[:, P["outline"]].astype(int)
    for width in np.unique(widths[widths > 0]):
        idx = np.flatnonzero(widths == width)
        x[idx] = outline(np.rint(x[idx]), int(width), inner)
    idx = np.flatnonzero(params[:, P["jitter"]])
    if len(idx):
        x[idx] = jitter(x[idx], params[idx])
    idx = np.flatnonzero(params[:, P["gray"]])
    if len(idx):
        x[idx] = luma(x[idx])
    idx = np.flatnonzero(params[:, P["blur"]])
    if len(idx):
        sigma = params[idx, P["blur"]]
        x[idx] = _separable(x[idx], blur_matrices(sigma, out_h), blur_matrices(sigma, out_w))
    return _u8(x).transpose(0, 2, 3, 1)


def augment(img: np.ndarray, rng: np.random.Generator, cfg: dict[str, Any], size: int) -> np.ndarray:
    """One uint8 [H, W, 3] image -> augmented uint8 [size, size, 3] (`draw` then `apply` on a batch of one)."""
    return apply(np.asarray(img)[None], draw(rng, cfg, img.shape)[None], cfg, size)[0]


def collate(elements: Sequence[dict[str, Any]], cfg: dict[str, Any], size: int,
            uint8: bool = False) -> dict[str, np.ndarray]:
    """grain batch function: pending images ("augment" parameters present) are augmented a source shape at a time
    and normalised to float32 [-1, 1] (`uint8`: left uint8, for `unit_range` on the device); every other field
    (and finished images) is stacked."""
    pending = [i for i, e in enumerate(elements) if "augment" in e]
    images = [None] * len(elements)
    for i, e in enumerate(elements):
        if "augment" not in e:
            images[i] = e["image"]
    shapes: dict[tuple[int, ...], list[int]] = {}
    for i in pending:
        shapes.setdefault(elements[i]["image"].shape, []).append(i)
    whole = None
    for idx in shapes.values():
        src = np.stack([elements[i]["image"] for i in idx])
        if cfg or src.shape[1:3] != (size, size):
            src = apply(src, np.stack([elements[i]["augment"] for i in idx]), cfg, size)
        # (no op configured on images already at size: `apply` is the identity)
        out = src if uint8 else np.multiply(src, np.float32(1 / 127.5), dtype=np.float32)
        if not uint8:
            out -= np.float32(1.0)
        if len(idx) == len(elements):  # one source shape, all pending: already the batch, in order
            whole = out
            break
        for i, img in zip(idx, out):
            images[i] = img
    keys = [k for k in elements[0] if k not in ("image", "augment")]
    return {"image": np.stack(images) if whole is None else whole,
            **{k: _stack([e[k] for e in elements]) for k in keys}}


def _stack(values: list[Any]) -> Any:
    """np.stack, per key for dicts (e.g. the bad-data counters)."""
    if isinstance(values[0], dict):
        return {k: np.stack([v[k] for v in values]) for k in values[0]}
    return np.stack(values)


def unit_range(batch: dict[str, Any]) -> dict[str, Any]:
    """The batch with its uint8 arrays (images a pipeline left uint8: 4× less to copy between processes and to the
    device) as float32 in [-1, 1], as `collate` normalises on the host; traced inside the jitted train step."""
    import jax.numpy as jnp

    import jax

    return jax.tree.map(lambda v: (v.astype(jnp.float32) * jnp.float32(1 / 127.5) - jnp.float32(1.0))
                        if v.dtype == jnp.uint8 else v, batch)
