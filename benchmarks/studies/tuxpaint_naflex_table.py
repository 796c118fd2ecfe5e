"""The NaFlex-vs-fixed table from the sweep's run directories: per mode and evaluation set (fixed 32 px squares, or
NaFlex at each budget), held-out image→text / text→image R@1 and R@5 (% of the 94 held-out stamps) as mean ± std over seeds, with
the training compute of each mode (forward GMACs × samples seen) and its wall time on this shared machine.

  scripts/vlm python benchmarks/studies/tuxpaint_naflex_table.py runs/naflex > benchmarks/studies/tuxpaint_naflex.md
"""
from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path

# (zero-shot top-1 is image→text R@1 here: the classes are the held-out captions)
METRICS = (("i2t_R@1", "image→text R@1"), ("i2t_R@5", "image→text R@5"), ("t2i_R@1", "text→image R@1"),
           ("t2i_R@5", "text→image R@5"))
SET = re.compile(r"zeroshot/(tuxpaint/test(?:@\d+)?)/all/top@1/model")


def _mean_std(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.1f} ± {100 * sd:.1f}"


def main(directory: str) -> str:
    runs: dict[str, list[dict]] = {}
    for path in sorted(Path(directory).glob("seed-*_mode-*/results.json")):
        mode = path.parent.name.split("_mode-")[1]
        runs.setdefault(mode, []).append(json.loads(path.read_text()))
    lines = ["| mode | evaluated at | seeds | " + " | ".join(label for _, label in METRICS)
             + " | train GMACs (fwd) | wall s |", "|---|---|---:|" + "---:|" * (len(METRICS) + 2)]
    for mode, results in runs.items():
        sets = sorted({m.group(1) for r in results for k in r["evals"] if (m := SET.fullmatch(k))},
                      key=lambda s: int(s.split("@")[1]) if "@" in s else 0)
        for name in sets:
            cells = [_mean_std([r["evals"][f"zeroshot/{name}/all/{metric}/model"] for r in results])
                     for metric, _ in METRICS]
            where = f"{name.split('@')[1]} patches" if "@" in name else "32 px square (16 patches)"
            gmacs = statistics.mean(r["train_gmacs"] for r in results)
            secs = statistics.mean(r["train_seconds"] for r in results)
            lines.append(f"| {mode} | {where} | {len(results)} | " + " | ".join(cells)
                         + f" | {gmacs:,.0f} | {secs:.0f} |")
    chance = next(iter(runs.values()))[0]["evals"].get("zeroshot/tuxpaint/test/all/top@1/chance") \
        or next(iter(runs.values()))[0]["evals"].get("zeroshot/tuxpaint/test@16/all/top@1/chance")
    lines += ["", f"Chance: R@1 {100 * chance:.1f}%, R@5 {500 * chance:.1f}% (94 held-out stamps, one caption each)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(main(sys.argv[1] if len(sys.argv) > 1 else "runs/naflex"), end="")
