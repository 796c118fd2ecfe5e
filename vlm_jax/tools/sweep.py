"""Run, list, print or collect a sweep (see `vlm_jax.scaling.sweep` for the sweep file format).

  python -m vlm_jax.tools.sweep experiments/sweeps/x.py --dir runs/x status    each run: done / partial / new
  python -m vlm_jax.tools.sweep experiments/sweeps/x.py --dir runs/x run       unfinished runs, one after another
  python -m vlm_jax.tools.sweep experiments/sweeps/x.py --dir runs/x run --index 3   only run 3 (1-based, e.g. a
                                                                                  SLURM array task)
  python -m vlm_jax.tools.sweep experiments/sweeps/x.py --dir runs/x print     one command per run (a job array)
  python -m vlm_jax.tools.sweep experiments/sweeps/x.py --dir runs/x collect --csv runs/x/runs.csv
"""
from __future__ import annotations

import argparse
import fnmatch
import sys
from pathlib import Path
from typing import Any, Sequence

from vlm_jax.scaling import sweep as sw


def main(argv: Sequence[str] | None = None) -> Any:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", help="experiments/sweeps/<file>.py[:arg]")
    parser.add_argument("action", choices=("status", "run", "print", "collect"))
    parser.add_argument("--dir", required=True, help="the sweep's directory: one workdir per run")
    parser.add_argument("--only", default="*", help="run-name pattern (fnmatch), e.g. 'size-s_*'")
    parser.add_argument("--index", type=int, default=0, help="1-based index of a single run (job arrays)")
    parser.add_argument("--csv", default="", help="collect: output CSV (default <dir>/runs.csv)")
    args = parser.parse_args(argv)
    runs = [r for r in sw.expand(sw.load_sweep(args.sweep)) if fnmatch.fnmatch(r.name, args.only)]
    if args.index:
        if not 1 <= args.index <= len(runs):
            raise SystemExit(f"--index {args.index} outside 1..{len(runs)}")
        runs = [runs[args.index - 1]]
    for run in runs:
        sw.resolved_config(run)  # a bad override fails here, before any run starts
    directory = Path(args.dir)
    if args.action == "status":
        states = {r.name: sw.status(r, directory) for r in runs}
        for name, state in states.items():
            print(f"{state:8s} {name}")
        return states
    if args.action == "print":
        lines = [sw.command(r, directory) for r in runs]
        print("\n".join(lines))
        return lines
    if args.action == "run":
        outcome = sw.run_local(runs, directory)
        failed = [n for n, o in outcome.items() if o.startswith("failed")]
        if failed:
            print(f"{len(failed)} run(s) failed: {failed}", file=sys.stderr)
        return outcome
    rows = sw.collect(runs, directory)
    path = sw.write_csv(rows, args.csv or directory / "runs.csv")
    print(f"{len(rows)} of {len(runs)} runs finished → {path}")
    return rows


if __name__ == "__main__":
    main()
