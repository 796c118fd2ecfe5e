"""Scaling-law fits: the Pareto frontier of error vs compute, power laws E = β·C^α (+ E∞), bootstrap intervals
and a plot. Works on any arrays (or CSV columns) of compute and error.

The frontier follows Cherti et al. (CVPR 2023): log10 C is split into `bins` equal-width bins over
[min, max + pad]; each non-empty bin gives one point, its midpoint and the lowest log10 E in it. The power law is
ordinary least squares of log10 E on log10 C. The saturating form E = β·C^α + E∞ profiles E∞ on a grid (each
candidate gets its least-squares β, α on log10(E − E∞)) and keeps the one with the smallest error in log10 E.
"""
from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class PowerLaw:
    """E(C) = beta · C^alpha + e_inf."""
    beta: float
    alpha: float
    e_inf: float = 0.0

    def __call__(self, compute: np.ndarray) -> np.ndarray:
        return self.beta * np.asarray(compute, np.float64) ** self.alpha + self.e_inf

    def formula(self, unit: str = "C") -> str:
        """E.g. "E = 5.86·C^-0.111" (+ "+ 0.12" when saturating)."""
        text = f"E = {self.beta:.4g}·{unit}^{self.alpha:.3f}"
        return text + (f" + {self.e_inf:.3g}" if self.e_inf else "")


def _positive(compute: Sequence[float], error: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    c, e = np.asarray(compute, np.float64), np.asarray(error, np.float64)
    if c.shape != e.shape or c.ndim != 1 or len(c) < 2:
        raise ValueError(f"need two 1-D arrays of equal length ≥ 2, got {c.shape} and {e.shape}")
    if (c <= 0).any() or (e <= 0).any():
        raise ValueError("compute and error must be positive (they are fitted in log space)")
    return c, e


def frontier(compute: Sequence[float], error: Sequence[float], bins: int = 5,
             pad: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """(compute, error) of the Pareto points: per equal-width bin of log10 C over [min, max + pad], the bin's
    midpoint and the lowest error in it; empty bins give no point."""
    c, e = _positive(compute, error)
    lc, le = np.log10(c), np.log10(e)
    edges = np.linspace(lc.min(), lc.max() + pad, bins + 1)
    which = np.clip(np.searchsorted(edges, lc, side="right") - 1, 0, bins - 1)
    mids, best = [], []
    for b in range(bins):
        inside = which == b
        if inside.any():
            mids.append((edges[b] + edges[b + 1]) / 2)
            best.append(le[inside].min())
    return 10 ** np.array(mids), 10 ** np.array(best)


def fit_power_law(compute: Sequence[float], error: Sequence[float]) -> PowerLaw:
    """Least squares of log10 E on log10 C."""
    c, e = _positive(compute, error)
    alpha, log_beta = np.polyfit(np.log10(c), np.log10(e), 1)
    return PowerLaw(float(10 ** log_beta), float(alpha))


def fit_saturating(compute: Sequence[float], error: Sequence[float], grid: int = 400) -> PowerLaw:
    """E = β·C^α + E∞ with 0 ≤ E∞ < min E, by profiling E∞ (two grid passes) and minimising the squared error in
    log10 E. Needs at least 3 points."""
    c, e = _positive(compute, error)
    if len(c) < 3:
        raise ValueError("the saturating form has three parameters: need at least 3 points")
    lc, le = np.log10(c), np.log10(e)

    def loss(e_inf: float) -> tuple[float, PowerLaw]:
        alpha, log_beta = np.polyfit(lc, np.log10(e - e_inf), 1)
        law = PowerLaw(float(10 ** log_beta), float(alpha), float(e_inf))
        return float(np.sum((np.log10(law(c)) - le) ** 2)), law

    hi = e.min() * (1 - 1e-9)
    candidates = np.linspace(0.0, hi, grid)
    best = min(candidates, key=lambda x: loss(x)[0])
    step = hi / (grid - 1)
    fine = np.linspace(max(0.0, best - step), min(hi, best + step), grid)
    return min((loss(x) for x in fine), key=lambda t: t[0])[1]


def fit_frontier(compute: Sequence[float], error: Sequence[float], bins: int = 5, saturating: bool = False,
                 pad: float = 0.1) -> PowerLaw:
    """The law through the Pareto frontier (`bins` = 0: through every point)."""
    c, e = (frontier(compute, error, bins, pad) if bins else _positive(compute, error))
    return fit_saturating(c, e) if saturating else fit_power_law(c, e)


def bootstrap(compute: Sequence[float], error: Sequence[float], fit: Callable[[np.ndarray, np.ndarray], PowerLaw],
              n: int = 1000, seed: int = 0, level: float = 0.95) -> dict[str, tuple[float, float]]:
    """Percentile intervals of beta, alpha and e_inf from `n` refits on runs resampled with replacement
    (resamples whose fit fails, e.g. all points in one bin, are dropped)."""
    c, e = _positive(compute, error)
    rng = np.random.default_rng(seed)
    laws = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", np.exceptions.RankWarning)  # resamples that repeat one point
        for _ in range(n):
            idx = rng.integers(0, len(c), len(c))
            try:
                laws.append(fit(c[idx], e[idx]))
            except (ValueError, np.linalg.LinAlgError):
                continue
    if not laws:
        raise ValueError("no bootstrap resample could be fitted")
    q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]
    return {k: tuple(float(v) for v in np.percentile([getattr(l, k) for l in laws], q))
            for k in ("beta", "alpha", "e_inf")}


def plot(groups: dict[str, tuple[np.ndarray, np.ndarray, PowerLaw, tuple[np.ndarray, np.ndarray] | None]],
         out: str | Path, xlabel: str = "compute C", ylabel: str = "error E", title: str = "") -> Path:
    """Log–log PNG: per group, every run, its frontier points (if any) and the fitted law with its formula."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for i, (name, (c, e, law, front)) in enumerate(groups.items()):
        color = f"C{i}"
        ax.scatter(c, e, s=14, alpha=0.45, color=color, label=f"{name} runs")
        if front is not None:
            ax.scatter(*front, s=40, marker="D", color=color, edgecolor="black", label=f"{name} frontier")
        xs = np.logspace(np.log10(min(c)), np.log10(max(c)), 100)
        ax.plot(xs, law(xs), color=color, label=f"{name}: {law.formula()}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.legend(fontsize=7)
    return save_figure(fig, out)


def save_figure(fig: Any, path: str | Path, dpi: int = 120) -> Path:
    """Lays out, writes (creating folders) and closes a matplotlib figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
