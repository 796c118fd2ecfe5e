"""The notebooks in `notebooks/`: run them top to bottom as plain Python, check that committed files carry no
outputs, strip outputs.

  python -m vlm_jax.tools.notebooks run notebooks/*.ipynb [--fast] [--figures DIR]
  python -m vlm_jax.tools.notebooks check notebooks/*.ipynb
  python -m vlm_jax.tools.notebooks strip notebooks/*.ipynb

`run` executes each notebook's code cells in order, in one namespace, in a fresh Python process whose working
directory is the notebook's folder (as Jupyter and Colab do), with a non-interactive matplotlib backend. `--fast`
sets VLM_JAX_NOTEBOOK_FAST=1: the notebooks' small settings (what the test suite runs). `--figures DIR` sets
VLM_JAX_NOTEBOOK_FIGURES: `show(fig, name)` then also saves each figure there (the README's pictures).
Notebooks hold plain Python only (no `!` or `%` lines), so they run the same in Colab, Jupyter and here.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

FAST_ENV = "VLM_JAX_NOTEBOOK_FAST"
FIGURES_ENV = "VLM_JAX_NOTEBOOK_FIGURES"

_RUNNER = """
import json, sys, time
cells = json.load(open(sys.argv[1]))
namespace = {"__name__": "__main__"}
for i, source in enumerate(cells):
    t0 = time.perf_counter()
    exec(compile(source, f"<{sys.argv[2]} cell {i + 1}>", "exec"), namespace)
    print(f"[notebook] cell {i + 1}/{len(cells)} done in {time.perf_counter() - t0:.1f}s", flush=True)
"""


def fast() -> bool:
    """True when the notebooks should use their small settings (the test suite's)."""
    return os.environ.get(FAST_ENV) == "1"


def show(fig: Any, name: str) -> None:
    """Displays a matplotlib figure; with VLM_JAX_NOTEBOOK_FIGURES set, also saves it there as <name>.png."""
    import matplotlib.pyplot as plt

    folder = os.environ.get(FIGURES_ENV)
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        fig.savefig(Path(folder) / f"{name}.png", dpi=110, bbox_inches="tight")
    plt.show()


def _load(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def _source(cell: dict[str, Any]) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def code_cells(path: str | Path) -> list[str]:
    """The code cells' sources; raises on IPython-only lines (`!cmd`, `%magic`), naming the cell."""
    cells = [_source(c) for c in _load(path)["cells"] if c.get("cell_type") == "code"]
    for i, src in enumerate(cells):
        bad = [line for line in src.splitlines() if line.lstrip().startswith(("!", "%"))]
        if bad:
            raise ValueError(f"{path} cell {i + 1}: IPython-only line {bad[0]!r}; use subprocess / Python instead")
    return cells


def run(path: str | Path, small: bool = True, figures: str | Path | None = None,
        timeout: float | None = None) -> float:
    """Runs a notebook's code cells in a fresh process; returns seconds; raises with its output on failure."""
    import tempfile

    path = Path(path).resolve()
    cells = code_cells(path)
    env = dict(os.environ, MPLBACKEND="Agg", **{FAST_ENV: "1" if small else "0"})
    if figures:
        env[FIGURES_ENV] = str(Path(figures).resolve())
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(cells, f)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-c", _RUNNER, f.name, path.name], cwd=path.parent, env=env,
                              capture_output=True, text=True, timeout=timeout)
    finally:
        os.unlink(f.name)
    if proc.returncode:
        raise RuntimeError(f"{path.name} failed (exit {proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    return time.perf_counter() - t0


def output_problems(path: str | Path) -> list[str]:
    """What stripping would remove: outputs and execution counts of code cells."""
    problems = []
    for i, cell in enumerate(_load(path)["cells"]):
        if cell.get("cell_type") != "code":
            continue
        if cell.get("outputs"):
            problems.append(f"{path} cell {i + 1}: has outputs")
        if cell.get("execution_count") is not None:
            problems.append(f"{path} cell {i + 1}: has an execution count")
    return problems


def strip(path: str | Path) -> bool:
    """Removes outputs and execution counts in place; True when the file changed."""
    nb = _load(path)
    before = json.dumps(nb, sort_keys=True)
    for cell in nb["cells"]:
        if cell.get("cell_type") == "code":
            cell["outputs"], cell["execution_count"] = [], None
    if json.dumps(nb, sort_keys=True) == before:
        return False
    Path(path).write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    return True


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vlm_jax.tools.notebooks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["run", "check", "strip"])
    parser.add_argument("notebooks", nargs="+")
    parser.add_argument("--fast", action="store_true", help="small settings (VLM_JAX_NOTEBOOK_FAST=1)")
    parser.add_argument("--figures", default=None, help="save the notebooks' figures here")
    args = parser.parse_args(argv)
    if args.command == "check":
        problems = [p for nb in args.notebooks for p in output_problems(nb)]
        print("\n".join(problems) or f"{len(args.notebooks)} notebooks carry no outputs")
        return 1 if problems else 0
    if args.command == "strip":
        for nb in args.notebooks:
            print(f"{nb}: {'stripped' if strip(nb) else 'already clean'}")
        return 0
    for nb in args.notebooks:
        print(f"{nb}: ran in {run(nb, args.fast, args.figures):.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
