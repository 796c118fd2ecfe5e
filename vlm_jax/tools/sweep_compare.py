"""Compare groups of seeded runs along one axis of a sweep CSV: mean ± std per point, Welch's t-test between two
groups, a markdown table, a PNG with error bars and a JSON.

  python -m vlm_jax.tools.sweep_compare --csv runs.csv --x batch --group loss \\
      --metric '1-evals/zeroshot/emoji/cross/nonflag/top@1/model=error (top-1)' --diff siglip,clip \\
      --out compare.png --md compare.md --json compare.json

`--metric` is `column` or `1-column`, optionally `=label`; repeat it for more panels. `--diff a,b` tests a − b.
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any, Sequence

from vlm_jax.scaling import compare


def read_metric(rows: list[dict[str, str]], x: str, group: str, metric: str, path: str = "") -> tuple[str, dict]:
    """(label, {group: [Point]}) of one `--metric` spec over the rows."""
    spec, _, label = metric.partition("=")
    column, flip = (spec[2:], True) if spec.startswith("1-") else (spec, False)
    for name in (x, group, column):
        if name not in rows[0]:
            raise ValueError(f"no column {name!r} in {path}; columns: {list(rows[0])}")
    ys = [1 - float(r[column]) if flip else float(r[column]) for r in rows]
    return label or spec, compare.summarize([float(r[x]) for r in rows], ys, [r[group] for r in rows])


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--csv", required=True)
    parser.add_argument("--x", required=True, help="numeric column along which groups are compared")
    parser.add_argument("--group", required=True, help="column whose values are the compared groups")
    parser.add_argument("--metric", action="append", required=True, help="[1-]column[=label]; repeatable")
    parser.add_argument("--diff", default="", help="a,b: Welch's t-test of a − b at each x")
    parser.add_argument("--scale", type=float, default=100.0, help="table values are multiplied by this")
    parser.add_argument("--out", default="", help="PNG, one panel per metric")
    parser.add_argument("--md", default="", help="markdown tables, one per metric")
    parser.add_argument("--json", default="", help="per-point values, means, stds and tests")
    parser.add_argument("--xlabel", default="")
    args = parser.parse_args(argv)
    with open(args.csv, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{args.csv} has no rows")
    names = tuple(args.diff.split(",")) if args.diff else None
    if names is not None and len(names) != 2:
        raise ValueError(f"--diff takes two group names a,b; got {args.diff!r}")
    xlabel = args.xlabel or args.x
    panels, report, tables = [], {}, []
    for metric in args.metric:
        label, summary = read_metric(rows, args.x, args.group, metric, args.csv)
        diff = None
        if names is not None:
            missing = [n for n in names if n not in summary]
            if missing:
                raise ValueError(f"--diff names {missing}, not values of {args.group!r}: {sorted(summary)}")
            diff = compare.differences(summary[names[0]], summary[names[1]])
        panels.append((label, summary))
        tables.append(f"**{label}** (×{args.scale:g}; mean ± std (runs))\n\n"
                      + compare.markdown(summary, diff, names, xlabel, args.scale))
        report[label] = dict(points={g: [dict(x=p.x, mean=p.mean, std=p.std, n=p.n, values=list(p.values))
                                         for p in pts] for g, pts in summary.items()}, diff=diff)
    print("\n".join(tables))
    if args.md:
        Path(args.md).write_text("\n".join(tables))
    if args.out:
        print(f"wrote {compare.plot(panels, args.out, xlabel)}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
