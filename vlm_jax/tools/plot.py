"""Overlay runs: training curves and evaluations of several workdirs against steps, samples seen or training
compute, in one PNG.

  python -m vlm_jax.tools.plot runs/a runs/b --x compute --train loss \\
      --eval zeroshot/emoji/cross/nonflag/top@1/model --out overlay.png

`--x`: step | samples (step × global batch) | compute (samples × forward GMACs per sample, from results.json).
Without `--eval`, every run's evaluations ending in `--eval_suffix` (default "all/top@1/model") are shown.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Sequence

from vlm_jax.train.progress import read_jsonl

X_LABELS = {"step": "step", "samples": "samples seen", "compute": "training compute (GMACs)"}


def run_series(workdir: str | Path, x: str = "step") -> dict[str, Any]:
    """{"name", "train": {key: [(x, value)]}, "eval": {key: [(x, value)]}} of one workdir's metrics.jsonl, with
    x in steps, samples seen or GMACs."""
    workdir = Path(workdir)
    if x not in X_LABELS:
        raise ValueError(f"--x must be one of {sorted(X_LABELS)}, got {x!r}")
    if not (workdir / "metrics.jsonl").exists():
        raise FileNotFoundError(f"{workdir}/metrics.jsonl not found: is this a training workdir?")
    scale = 1.0
    if x != "step":
        scale = float(json.loads((workdir / "config.json").read_text())["batch_size"])
    if x == "compute":
        results = workdir / "results.json"
        gmacs = json.loads(results.read_text()).get("forward_gmacs_per_sample") if results.exists() else None
        if not gmacs:
            raise ValueError(f"{workdir} has no forward_gmacs_per_sample in results.json (unfinished run?); "
                             "use --x step or samples")
        scale *= float(gmacs)
    out: dict[str, Any] = {"name": workdir.name, "train": {}, "eval": {}}
    for record in read_jsonl(workdir / "metrics.jsonl"):
        split = record.get("split")
        if split not in ("train", "eval"):
            continue
        for key, value in record.items():
            if key not in ("step", "split") and isinstance(value, (int, float)) and not isinstance(value, bool):
                out[split].setdefault(key, []).append((record["step"] * scale, float(value)))
    return out


def plot_runs(workdirs: Sequence[str | Path], out: str | Path, x: str = "step", train_keys: Sequence[str] = ("loss",),
              eval_keys: Sequence[str] = (), eval_suffix: str = "all/top@1/model") -> dict[str, list[dict]]:
    """Writes the overlay PNG; returns {panel key: [per-run series]} as plotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [run_series(w, x) for w in workdirs]
    if not eval_keys:
        eval_keys = sorted({k for r in runs for k in r["eval"] if k.endswith(eval_suffix)})
    panels = [("train", k) for k in train_keys] + [("eval", k) for k in eval_keys]
    if not panels:
        raise ValueError("nothing to plot: give --train or --eval keys")
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.6), squeeze=False)
    plotted: dict[str, list[dict]] = {}
    for ax, (split, key) in zip(axes[0], panels):
        for i, run in enumerate(runs):
            pts = run[split].get(key, [])
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="o" if split == "eval" else None, color=f"C{i % 10}", label=run["name"])
            plotted.setdefault(f"{split}/{key}", []).append({"run": run["name"], "points": pts})
        ax.set_title(f"{split}: {key}", fontsize=9)
        ax.set_xlabel(X_LABELS[x])
        if x == "compute":
            ax.set_xscale("log")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return plotted


def main(argv: Sequence[str] | None = None) -> dict[str, list[dict]]:
    parser = argparse.ArgumentParser(prog="python -m vlm_jax.tools.plot", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workdirs", nargs="+")
    parser.add_argument("--x", default="step", choices=sorted(X_LABELS))
    parser.add_argument("--train", action="append", default=None, help="train metric keys (default: loss)")
    parser.add_argument("--eval", action="append", default=[], help="eval metric keys")
    parser.add_argument("--eval_suffix", default="all/top@1/model", help="without --eval: keys ending in this")
    parser.add_argument("--out", default="overlay.png")
    args = parser.parse_args(argv)
    plotted = plot_runs(args.workdirs, args.out, args.x, args.train or ["loss"], args.eval, args.eval_suffix)
    print(f"wrote {args.out} ({len(plotted)} panels, {len(args.workdirs)} runs)")
    return plotted


if __name__ == "__main__":
    main()
