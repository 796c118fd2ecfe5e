"""Position-embedding grids resized to another resolution the way each library does it, so that an imported model
at a new image size gives the library's own numbers: torch's bicubic `F.interpolate` (align_corners=False) without
antialiasing (HF transformers' `interpolate_pos_encoding`) and with it (open_clip's `resize_pos_embed`), and
scipy's order-1 `ndimage.zoom` (big_vision's `resample_posemb`)."""
from __future__ import annotations

import numpy as np


def _cubic(x: np.ndarray, a: float) -> np.ndarray:
    """Keys' cubic convolution kernel with parameter a."""
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x <= 1, near, np.where(x < 2, far, 0.0))


def bicubic_matrix(n_in: int, n_out: int, antialias: bool) -> np.ndarray:
    """[n_out, n_in] float64 weights of torch's 1-D bicubic resize with align_corners=False.

    Plain (a=-0.75): four taps around (i + 0.5)·s − 0.5, indices clamped to the edge. Antialiased (a=-0.5, PIL's
    filter): taps within the support around (i + 0.5)·s, widened by s when shrinking, taps outside the grid dropped
    and the rest renormalised."""
    scale = n_in / n_out
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        if not antialias:
            src = (i + 0.5) * scale - 0.5
            base = int(np.floor(src))
            t = src - base
            for tap in range(-1, 3):
                m[i, min(max(base + tap, 0), n_in - 1)] += _cubic(np.array(t - tap), -0.75)
        else:
            support = 2.0 * max(scale, 1.0)
            inv = 1.0 / scale if scale >= 1.0 else 1.0
            center = scale * (i + 0.5)
            lo = max(int(center - support + 0.5), 0)
            hi = min(int(center + support + 0.5), n_in)
            j = np.arange(lo, hi)
            w = _cubic((j - center + 0.5) * inv, -0.5)
            m[i, lo:hi] = w / w.sum()
    return m


def resize_grid(grid: np.ndarray, new: tuple[int, int], antialias: bool) -> np.ndarray:
    """[h, w, d] → [new_h, new_w, d] by torch's separable bicubic resize (float64 inside, float32 out)."""
    h, w, _ = grid.shape
    rows, cols = bicubic_matrix(h, new[0], antialias), bicubic_matrix(w, new[1], antialias)
    out = np.einsum("ih,hwd->iwd", rows, grid.astype(np.float64))
    return np.einsum("jw,iwd->ijd", cols, out).astype(np.float32)


def linear_zoom_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] float64 weights of scipy.ndimage.zoom(order=1) along one axis (grid_mode False): output i
    samples input position i·(n_in − 1)/(n_out − 1), so both end points are kept, linearly between neighbours."""
    m = np.zeros((n_out, n_in))
    step = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
    for i in range(n_out):
        src = min(i * step, n_in - 1)
        lo = min(int(np.floor(src)), n_in - 1)
        t = src - lo
        m[i, lo] += 1.0 - t
        if t > 0:
            m[i, lo + 1] += t
    return m


def zoom_grid(grid: np.ndarray, new: tuple[int, int]) -> np.ndarray:
    """[h, w, d] → [new_h, new_w, d] as big_vision resamples position tables (scipy zoom, order 1)."""
    h, w, _ = grid.shape
    rows, cols = linear_zoom_matrix(h, new[0]), linear_zoom_matrix(w, new[1])
    out = np.einsum("ih,hwd->iwd", rows, grid.astype(np.float64))
    return np.einsum("jw,iwd->ijd", cols, out).astype(grid.dtype)
