"""The contrastive-family table from the sweep's run directories: per method, held-out zero-shot and retrieval on
the OpenMoji drawings (emoji/cross, non-flag concepts) and zero-shot on the unseen concepts and Fashion-MNIST, as
mean ± std over seeds, with each method's training compute (forward GMACs × samples seen) and wall time on this
shared machine.

  scripts/vlm python benchmarks/studies/contrastive_family_table.py benchmarks/studies/contrastive_family_runs > benchmarks/studies/contrastive_family.md
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

METRICS = (("emoji/cross/nonflag/top@1", "cross top-1"), ("emoji/cross/nonflag/top@5", "cross top-5"),
           ("emoji/cross/nonflag/i2t_R@5", "cross i2t R@5"), ("emoji/cross/nonflag/t2i_R@5", "cross t2i R@5"),
           ("emoji/unseen/nonflag/top@1", "unseen top-1"), ("fashion_mnist/all/top@1", "Fashion-MNIST top-1"))


def _mean_std(values: list[float]) -> str:
    """Mean ± std over seeds in percent; one seed: its value alone."""
    if len(values) == 1:
        return f"{100 * values[0]:.1f}"
    return f"{100 * statistics.mean(values):.1f} ± {100 * statistics.stdev(values):.1f}"


def main(directory: str) -> str:
    runs: dict[str, list[dict]] = {}
    for path in sorted(Path(directory).glob("seed-*_method-*/results.json")):
        runs.setdefault(path.parent.name.split("_method-")[1], []).append(json.loads(path.read_text()))
    lines = ["| method | seeds | " + " | ".join(label for _, label in METRICS) + " | train GMACs (fwd) | wall s |",
             "|---|---:|" + "---:|" * (len(METRICS) + 2)]
    for method, results in runs.items():
        cells = [_mean_std([r["evals"][f"zeroshot/{key}/model"] for r in results])
                 if all(f"zeroshot/{key}/model" in r["evals"] for r in results) else "" for key, _ in METRICS]
        gmacs = statistics.mean(r["train_gmacs"] for r in results)
        secs = statistics.mean(r["train_seconds"] for r in results)
        lines.append(f"| {method} | {len(results)} | " + " | ".join(cells) + f" | {gmacs:,.0f} | {secs:.0f} |")
    first = next(iter(runs.values()))[0]["evals"]
    base = [f"{label} {100 * first[f'zeroshot/{key}/{who}']:.1f}" for key, label in METRICS
            for who in ("pixel",) if f"zeroshot/{key}/{who}" in first]
    chance = [f"{label} {100 * first[f'zeroshot/{key}/chance']:.1f}" for key, label in METRICS
              if f"zeroshot/{key}/chance" in first]
    lines += ["", "Pixel nearest neighbour: " + ", ".join(base) + ".", "Chance: " + ", ".join(chance) + "."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(main(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/studies/contrastive_family_runs"), end="")
