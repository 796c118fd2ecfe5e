"""Seeded comparisons: mean ± std over repeated runs per (group, x), and the difference of two groups at each x with
Welch's t-test (unequal variances)."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import stats

from vlm_jax.scaling.fit import save_figure


@dataclasses.dataclass(frozen=True)
class Point:
    """The runs of one group at one x: their values, mean and sample standard deviation (ddof 1)."""
    x: float
    values: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return float(np.mean(self.values))

    @property
    def std(self) -> float:
        return float(np.std(self.values, ddof=1)) if self.n > 1 else float("nan")


def summarize(xs: Sequence[float], ys: Sequence[float], groups: Sequence[str]) -> dict[str, list[Point]]:
    """{group: [Point per distinct x, ascending]} from parallel columns."""
    cells: dict[str, dict[float, list[float]]] = {}
    for x, y, g in zip(xs, ys, groups):
        cells.setdefault(str(g), {}).setdefault(float(x), []).append(float(y))
    return {g: [Point(x, tuple(v)) for x, v in sorted(by_x.items())] for g, by_x in cells.items()}


def welch(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """mean(a) − mean(b), its standard error, Welch's t, the Welch–Satterthwaite degrees of freedom and the
    two-sided p-value."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    diff, se = float(a.mean() - b.mean()), float(np.sqrt(va + vb))
    if se == 0:
        return dict(diff=diff, se=0.0, t=float("inf") if diff else 0.0, dof=float(len(a) + len(b) - 2),
                    p=0.0 if diff else 1.0)
    dof = float((va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1)))
    t = diff / se
    return dict(diff=diff, se=se, t=t, dof=dof, p=float(2 * stats.t.sf(abs(t), dof)))


def differences(a: list[Point], b: list[Point]) -> list[dict[str, float]]:
    """Welch's test of a vs b at every x both have (each with ≥ 2 runs)."""
    by_x = {p.x: p for p in b}
    return [dict(x=p.x, **welch(p.values, by_x[p.x].values)) for p in a
            if p.x in by_x and p.n > 1 and by_x[p.x].n > 1]


def markdown(summary: dict[str, list[Point]], diff: list[dict[str, float]] | None, names: tuple[str, str] | None,
             xlabel: str, scale: float = 100.0, digits: int = 1) -> str:
    """A table: one row per x, mean ± std (n) per group, and (with `diff`) the difference, its SE and p."""
    groups = list(summary)
    xs = sorted({p.x for pts in summary.values() for p in pts})
    head = [xlabel, *groups] + ([f"{names[0]} − {names[1]}", "p (Welch)"] if diff is not None else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    by_diff = {d["x"]: d for d in diff or []}
    for x in xs:
        cells = [f"{x:g}"]
        for g in groups:
            p = next((p for p in summary[g] if p.x == x), None)
            cells.append(f"{scale * p.mean:.{digits}f} ± {scale * p.std:.{digits}f} ({p.n})" if p else "")
        if diff is not None:
            d = by_diff.get(x)
            cells += [f"{scale * d['diff']:+.{digits}f} ± {scale * d['se']:.{digits}f}", f"{d['p']:.3f}"] if d \
                else ["", ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(panels: Sequence[tuple[str, dict[str, list[Point]]]], path: str | Path, xlabel: str, logx: bool = True,
         title: str = "") -> Path:
    """One panel per (ylabel, summary): mean ± std error bars per group, every run as a faint dot."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4), squeeze=False)
    for ax, (ylabel, summary) in zip(axes[0], panels):
        for i, (group, points) in enumerate(summary.items()):
            color = f"C{i}"
            xs = np.array([p.x for p in points])
            ax.errorbar(xs, [p.mean for p in points], yerr=[p.std for p in points], color=color, marker="o",
                        capsize=3, label=group)
            for p in points:
                ax.scatter([p.x] * p.n, p.values, color=color, alpha=0.3, s=10)
        if logx:
            ax.set_xscale("log", base=2)
            ax.set_xticks(sorted({p.x for pts in summary.values() for p in pts}))
            ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)
