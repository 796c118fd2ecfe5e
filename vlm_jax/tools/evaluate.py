"""Re-runs a trained run's evaluators on its newest checkpoint (e.g. after the evaluation code changed).

  python -m vlm_jax.tools.evaluate --workdir runs/mt_encdec [--set evals.max_items=100 ...]

Prints the results table and writes <workdir>/evals_step<N>.json; training state is not touched.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path



def evaluate(workdir: str | Path, overrides: list[str] | None = None) -> tuple[int, dict[str, float]]:
    """(checkpoint step, flat metrics of every evaluator) of the run in `workdir`, with `evals.*` overrides."""
    from vlm_jax.tools.caption import load_run

    bad = [o for o in overrides or [] if not o.startswith("evals.")]
    if bad:
        raise SystemExit(f"only evals.* keys can be overridden here, got {bad}")
    setup, params, step = load_run(workdir, overrides)
    out: dict[str, float] = {}
    for name, evaluator in setup.objective.evaluators().items():
        out.update({f"{name}/{k}": v for k, v in evaluator(params, None).items()})
    return step, out


def main(argv: list[str] | None = None) -> None:
    """CLI entry point."""
    from vlm_jax.evals.report import format_results

    parser = argparse.ArgumentParser(prog="python -m vlm_jax.tools.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--set", nargs="*", default=[], help="evals.KEY=VALUE overrides")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    step, results = evaluate(args.workdir, args.set)
    print(format_results(results, f"{args.workdir} — step {step}"))
    path = Path(args.workdir) / f"evals_step{step}.json"
    path.write_text(json.dumps(results, indent=1, sort_keys=True))
    print(f"Results: {path}")


if __name__ == "__main__":
    main()
