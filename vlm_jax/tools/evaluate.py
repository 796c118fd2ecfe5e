"""Re-runs a trained run's evaluators on its newest checkpoint (e.g. after the evaluation code changed), or the
standard zero-shot benchmarks (`--suite`, docs/benchmarks_suite.md) over prepared TFDS datasets.

  python -m vlm_jax.tools.evaluate --workdir runs/mt_encdec [--set evals.max_items=100 ...]
  python -m vlm_jax.tools.evaluate --workdir runs/clip --suite imagenet,cifar10,coco [--data_dir ~/tensorflow_datasets]
      [--out DIR] [--max_items N]

Prints the results table and writes <workdir>/evals_step<N>.json; with --suite, one clip_benchmark JSON file per
dataset in --out (default <workdir>/benchmarks). Training state is not touched.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def _check_overrides(overrides: list[str] | None) -> None:
    bad = [o for o in overrides or [] if not o.startswith("evals.")]
    if bad:
        raise SystemExit(f"only evals.* keys can be overridden here, got {bad}")


def evaluate(workdir: str | Path, overrides: list[str] | None = None) -> tuple[int, dict[str, float]]:
    """(checkpoint step, flat metrics of every evaluator) of the run in `workdir`, with `evals.*` overrides."""
    from vlm_jax.tools.caption import load_run

    _check_overrides(overrides)
    setup, params, step = load_run(workdir, overrides)
    out: dict[str, float] = {}
    for name, evaluator in setup.objective.evaluators().items():
        out.update({f"{name}/{k}": v for k, v in evaluator(params, None).items()})
    return step, out


def evaluate_suite(workdir: str | Path, suite: str, data_dir: str | None = None, out: str | Path | None = None,
                   max_items: int = 0, overrides: list[str] | None = None) -> tuple[int, dict[str, Any], list[Path]]:
    """(checkpoint step, {dataset: {"task", "metrics"}}, the clip_benchmark JSON files written) of the benchmark
    `suite` ("imagenet,cifar10,coco") on the run in `workdir`; JSON files go to `out` (default
    <workdir>/benchmarks), named as clip_benchmark names them with model = the workdir's name, pretrained =
    "step<N>". Unknown names and missing datasets exit with the reason."""
    from vlm_jax.evals.standard import parse_suite, suite_evaluator
    from vlm_jax.tools.caption import load_run

    _check_overrides(overrides)
    try:
        benchmarks = parse_suite(suite)  # before loading the run: a typo fails at once
    except ValueError as exc:
        raise SystemExit(str(exc)) from exc
    setup, params, step = load_run(workdir, overrides)
    try:
        evaluator = suite_evaluator(setup.objective, benchmarks, data_dir, max_items)
    except (FileNotFoundError, ValueError) as exc:
        raise SystemExit(str(exc)) from exc
    evaluator(params)
    paths = evaluator.write_json(Path(out) if out else Path(workdir) / "benchmarks", Path(workdir).resolve().name,
                                 f"step{step}")
    return step, evaluator.results, paths


def main(argv: list[str] | None = None) -> None:
    """CLI entry point."""
    from vlm_jax.evals.report import format_results

    parser = argparse.ArgumentParser(prog="python -m vlm_jax.tools.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--set", nargs="*", default=[], help="evals.KEY=VALUE overrides")
    parser.add_argument("--suite", default=None,
                        help="standard benchmarks instead of the run's evaluators, e.g. imagenet,cifar10,coco")
    parser.add_argument("--data_dir", default=None,
                        help="TFDS data dir of the prepared benchmark datasets (default $TFDS_DATA_DIR or "
                             "~/tensorflow_datasets)")
    parser.add_argument("--out", default=None, help="folder for the clip_benchmark JSON files (default "
                                                    "<workdir>/benchmarks)")
    parser.add_argument("--max_items", type=int, default=0, help="images per benchmark dataset (0: all)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.suite is not None:
        from vlm_jax.evals.standard import format_suite

        step, results, paths = evaluate_suite(args.workdir, args.suite, args.data_dir, args.out, args.max_items,
                                              args.set)
        print(format_suite(results, f"{args.workdir} — step {step}"))
        for path in paths:
            print(f"Results: {path}")
        return
    step, results = evaluate(args.workdir, args.set)
    print(format_results(results, f"{args.workdir} — step {step}"))
    path = Path(args.workdir) / f"evals_step{step}.json"
    path.write_text(json.dumps(results, indent=1, sort_keys=True))
    print(f"Results: {path}")


if __name__ == "__main__":
    main()
