"""Issue 32's comparison table from the bridge sweep's run directories (and, given as further arguments, other
captioning runs' workdirs such as CoCa or PrefixLM on the same data): held-out caption CIDEr-D (×100) on the
OpenMoji drawings (non-flag concepts, seen and unseen) and the scoring classifier's top-1, as mean ± std over
seeds, with trainable / total parameters, training FLOPs and wall time.

  scripts/vlm python benchmarks/studies/frozen_bridges_table.py benchmarks/studies/frozen_bridges_runs [RUN …]
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

METRICS = (("caption/emoji/cross/nonflag/CIDEr-D/model", "cross CIDEr-D", 100),
           ("caption/emoji/unseen/nonflag/CIDEr-D/model", "unseen CIDEr-D", 100),
           ("scoring/emoji/cross/nonflag/top@1/model", "cross scoring top-1 %", 100))


def _cell(values: list[float], scale: float) -> str:
    if not values:
        return ""
    if len(values) == 1:
        return f"{scale * values[0]:.1f}"
    return f"{scale * statistics.mean(values):.1f} ± {scale * statistics.stdev(values):.1f}"


def _runs(paths: list[str]) -> dict[str, list[dict]]:
    """{name: [results of each seed]}: the sweep's seed-*_bridge-* directories, or single run directories."""
    out: dict[str, list[dict]] = {}
    for path in map(Path, paths):
        found = sorted(path.glob("seed-*_bridge-*/results.json"))
        if found:
            for f in found:
                out.setdefault(f.parent.name.split("_bridge-")[1], []).append(json.loads(f.read_text()))
        elif (path / "results.json").exists():
            out.setdefault(path.name, []).append(json.loads((path / "results.json").read_text()))
    return out


def main(paths: list[str]) -> str:
    runs = _runs(paths)
    lines = ["| model | seeds | " + " | ".join(label for _, label, _ in METRICS)
             + " | trainable / total params | train PFLOPs | wall s |", "|---|---:|" + "---:|" * (len(METRICS) + 3)]
    for name, results in runs.items():
        cells = [_cell([r["evals"][k] for r in results if k in r["evals"]], scale) for k, _, scale in METRICS]
        r0 = results[0]
        params = f"{r0.get('trainable_params', r0['params']) / 1e6:.2f} M / {r0['params'] / 1e6:.2f} M"
        pflops = statistics.mean(r["train_flops"] for r in results) / 1e15
        wall = statistics.mean(r["train_seconds"] for r in results)
        lines.append(f"| {name} | {len(results)} | " + " | ".join(cells) + f" | {params} | {pflops:.2f} | {wall:.0f} |")
    first = next(iter(runs.values()))[0]["evals"]
    pixel = [f"{label} {scale * first[k.replace('/model', '/pixel')]:.1f}" for k, label, scale in METRICS
             if k.startswith("caption/") and k.replace("/model", "/pixel") in first]
    lines += ["", "Pixel nearest-neighbour captioner: " + ", ".join(pixel) + "."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(main(sys.argv[1:] or ["benchmarks/studies/frozen_bridges_runs"]), end="")
