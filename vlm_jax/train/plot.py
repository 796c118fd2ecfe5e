"""Training curves from metrics.jsonl as a PNG (loss, in-batch accuracy, learning rate, throughput)."""
from __future__ import annotations

from pathlib import Path

from vlm_jax.train.progress import read_jsonl

PANELS = (("loss", "loss"), ("acc/i2t", "in-batch i2t accuracy"), ("lr", "learning rate"),
          ("samples_per_sec", "samples / s"))


def plot_curves(workdir: str | Path, out_name: str = "curves.png") -> Path | None:
    """Writes `<workdir>/curves.png`; returns its path (None when there is nothing to plot)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return None
    train = [r for r in read_jsonl(path) if r.get("split") == "train"]
    if not train:
        return None
    fig, axes = plt.subplots(1, len(PANELS), figsize=(4 * len(PANELS), 3))
    for ax, (key, title) in zip(axes, PANELS):
        pts = [(r["step"], r[key]) for r in train if key in r]
        if pts:
            ax.plot(*zip(*pts))
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out = Path(workdir) / out_name
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out
