"""Fit scaling laws to any CSV of runs: Pareto frontier of error vs compute, E = β·C^α (+ E∞), bootstrap
intervals, a log–log PNG and a JSON of the fits.

  python -m vlm_jax.tools.scaling_fit --csv runs.csv --compute gmacs_total --error 1-acc1 \\
      --group upstream_dataset --merge 'LAION-*=OpenCLIP (LAION)' --bins 5 --out fit.png

`--error` is a column or `1-<column>` (error from an accuracy). A group with no more runs than `--bins` is fitted
through all its points (a frontier of 3 runs in 5 bins would be no frontier); `--bins 0` always does that.
"""
from __future__ import annotations

import argparse
import csv
import fnmatch
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vlm_jax.scaling import fit


def read_columns(path: str | Path, compute: str, error: str, group: str = "",
                 merge: Sequence[str] = ()) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{group: (compute, error)} from a CSV; `error` "1-col" means 1 − col; `merge` "pattern=name" renames
    matching groups (fnmatch)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{path} has no rows")
    columns = list(rows[0])
    error_col, flip = (error[2:], True) if error.startswith("1-") else (error, False)
    for name in (compute, error_col, group):
        if name and name not in columns:
            raise ValueError(f"no column {name!r} in {path}; columns: {columns}")
    rules = [m.split("=", 1) for m in merge]
    if any(len(r) != 2 for r in rules):
        raise ValueError(f"--merge takes pattern=name, got {list(merge)}")
    out: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        key = row[group] if group else "all"
        key = next((name for pattern, name in rules if fnmatch.fnmatch(key, pattern)), key)
        e = float(row[error_col])
        out.setdefault(key, []).append((float(row[compute]), 1 - e if flip else e))
    return {k: (np.array([c for c, _ in v]), np.array([e for _, e in v])) for k, v in out.items()}


def fit_groups(groups: dict[str, tuple[np.ndarray, np.ndarray]], bins: int = 5, saturating: bool = False,
               boot: int = 0, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Per group: the law, whether it went through a frontier, the points it was fitted to and bootstrap CIs."""
    results = {}
    for name, (c, e) in groups.items():
        use_bins = bins if len(c) > bins else 0
        law = fit.fit_frontier(c, e, use_bins, saturating)
        front = fit.frontier(c, e, use_bins) if use_bins else None
        res: dict[str, Any] = dict(runs=len(c), bins=use_bins, beta=law.beta, alpha=law.alpha, e_inf=law.e_inf,
                                   formula=law.formula(), law=law, frontier=front)
        if boot:
            res["ci95"] = fit.bootstrap(c, e, lambda cc, ee: fit.fit_frontier(cc, ee, use_bins, saturating),
                                        n=boot, seed=seed)
        results[name] = res
    return results


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--csv", required=True)
    parser.add_argument("--compute", required=True, help="column of total training compute")
    parser.add_argument("--error", required=True, help="error column, or 1-<accuracy column>")
    parser.add_argument("--group", default="", help="column whose values get separate fits")
    parser.add_argument("--merge", action="append", default=[], help="pattern=name: pool matching groups")
    parser.add_argument("--bins", type=int, default=5, help="frontier bins in log10 C (0: fit every run)")
    parser.add_argument("--saturating", action="store_true", help="fit E = β·C^α + E∞")
    parser.add_argument("--bootstrap", type=int, default=0, help="resamples for 95%% intervals (0: none)")
    parser.add_argument("--out", default="", help="PNG of runs, frontiers and fits")
    parser.add_argument("--json", default="", help="write the fits here")
    parser.add_argument("--xlabel", default="")
    parser.add_argument("--ylabel", default="")
    args = parser.parse_args(argv)
    groups = read_columns(args.csv, args.compute, args.error, args.group, args.merge)
    results = fit_groups(groups, args.bins, args.saturating, args.bootstrap)
    for name, r in results.items():
        how = f"frontier of {r['bins']} bins" if r["bins"] else "every run"
        ci = "".join(f"  {k} ∈ [{lo:.4g}, {hi:.4g}]" for k, (lo, hi) in r.get("ci95", {}).items()
                     if k != "e_inf" or args.saturating)
        print(f"{name}: {r['runs']} runs, {how}: {r['formula']}{ci}")
    if args.out:
        fit.plot({n: (*groups[n], r["law"], r["frontier"]) for n, r in results.items()}, args.out,
                 xlabel=args.xlabel or args.compute, ylabel=args.ylabel or f"error ({args.error})")
        print(f"wrote {args.out}")
    if args.json:
        keep = ("runs", "bins", "beta", "alpha", "e_inf", "formula", "ci95")
        Path(args.json).write_text(json.dumps({n: {k: r[k] for k in keep if k in r} for n, r in results.items()},
                                              indent=1))
    return results


if __name__ == "__main__":
    main()
