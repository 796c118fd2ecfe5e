"""Sweeps: a grid of runs over a base experiment, run here one after another or printed one command per run for a
cluster scheduler; finished runs are skipped, interrupted ones resume, and every run's compute and final
evaluations are collected into one CSV.

A sweep file (`experiments/sweeps/*.py`) defines `get_sweep(arg)` returning a dict (or ConfigDict):
  base: "experiments/x.py[:arg]"            the experiment every run starts from
  axes: {axis: {label: spec}}               the grid is the product of the axes, in order; a spec is a list of
                                            "key=value" config overrides, or {"arg": "k=v,…", "overrides": […]}
                                            where "arg" extends the base experiment's own argument string
  overrides: ["key=value", …]               applied to every run (optional)
  slices: [(pattern, topology), …]         the TPU slice each run is planned on (`vlm_jax.tools.plan`; optional)
Run names are "<axis>-<label>" joined by "_" (e.g. "size-s_steps-1k"); each run's workdir is `<dir>/<name>`.
"""
from __future__ import annotations

import csv
import dataclasses
import importlib.util
import itertools
import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

from vlm_jax.config import apply_overrides, load_config, parse_arg


@dataclasses.dataclass(frozen=True)
class Run:
    """One grid point: its name, experiment (with argument string) and overrides."""
    name: str
    config: str
    overrides: tuple[str, ...]
    labels: tuple[tuple[str, str], ...]  # (axis, label) pairs

    def argv(self, workdir: Path) -> list[str]:
        """`python -m vlm_jax.main` arguments of this run."""
        return ["--config", self.config, "--workdir", str(workdir), *(f"--config.{o}" for o in self.overrides)]


def two_tower_size(image_width: int, image_depth: int, text_width: int, text_depth: int, embed_dim: int,
                   head_dim: int = 32, mlp_ratio: int = 4) -> list[str]:
    """Config overrides that set a two-tower model's widths and depths (heads = width / head_dim, MLP = ratio × width)."""
    out = []
    for tower, width, depth in (("image", image_width, image_depth), ("text", text_width, text_depth)):
        out += [f"model.{tower}.width={width}", f"model.{tower}.depth={depth}",
                f"model.{tower}.mlp_dim={mlp_ratio * width}", f"model.{tower}.num_heads={width // head_dim}"]
    return out + [f"model.embed_dim={embed_dim}"]


def load_sweep(spec: str) -> dict[str, Any]:
    """`path.py[:arg]` → the dict its `get_sweep(arg)` returns."""
    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location(f"vlm_jax_sweep_{Path(path).stem}", path)
    if module_spec is None or not Path(path).exists():
        raise FileNotFoundError(f"no sweep file {path}")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    sweep = module.get_sweep(parse_arg(arg))  # "k=v,…" → ConfigDict (as configs get it); a bare word stays
    sweep = sweep.to_dict() if hasattr(sweep, "to_dict") else dict(sweep)
    missing = {"base", "axes"} - set(sweep)
    if missing:
        raise ValueError(f"sweep {path} lacks {sorted(missing)}; it needs base, axes (and optionally overrides)")
    return sweep


def _with_arg(config: str, extra: str) -> str:
    """experiments/x.py[:a=1] + "b=2" → experiments/x.py:a=1,b=2."""
    if not extra:
        return config
    return f"{config},{extra}" if ":" in config else f"{config}:{extra}"


def expand(sweep: dict[str, Any]) -> list[Run]:
    """Every grid point, the first axis varying slowest."""
    axes = list(sweep["axes"].items())
    runs = []
    for combo in itertools.product(*[list(points.items()) for _, points in axes]):
        config, overrides, labels = sweep["base"], list(sweep.get("overrides", [])), []
        for (axis, _), (label, spec) in zip(axes, combo):
            if isinstance(spec, dict):
                unknown = set(spec) - {"arg", "overrides"}
                if unknown:
                    raise ValueError(f"axis {axis!r} point {label!r}: unknown keys {sorted(unknown)}; "
                                     "valid: arg, overrides")
                config = _with_arg(config, spec.get("arg", ""))
                overrides += list(spec.get("overrides", []))
            else:
                overrides += list(spec)
            labels.append((axis, str(label)))
        name = "_".join(f"{a}-{l}" for a, l in labels)
        runs.append(Run(name, config, tuple(overrides), tuple(labels)))
    return runs


def resolved_config(run: Run) -> Any:
    """The run's final config (as `vlm_jax.main` builds it); raises on a bad override, naming the valid keys."""
    from vlm_jax.train.trainer import finalize_config

    return apply_overrides(finalize_config(load_config(run.config)), run.overrides)


def status(run: Run, directory: Path) -> str:
    """"done" (results.json at the configured step count), "partial" (a workdir, no final results) or "new"."""
    workdir = Path(directory) / run.name
    results = workdir / "results.json"
    if results.exists():
        step = json.loads(results.read_text()).get("step")
        if step == resolved_config(run).total_steps:
            return "done"
    return "partial" if workdir.exists() else "new"


def command(run: Run, directory: Path, python: str = "python") -> str:
    """The shell command that runs (or resumes) this run."""
    return shlex.join([python, "-m", "vlm_jax.main", *run.argv(Path(directory) / run.name)])


def run_local(runs: Sequence[Run], directory: Path, stream: Any = sys.stdout) -> dict[str, str]:
    """Runs every unfinished run in turn (a fresh process each; a partial one resumes from its checkpoint);
    returns {name: "skipped" | "ran" | "failed (exit N)"}. A failed run does not stop the sweep."""
    outcome = {}
    for i, run in enumerate(runs):
        state = status(run, directory)
        if state == "done":
            outcome[run.name] = "skipped"
            print(f"[{i + 1}/{len(runs)}] {run.name}: done, skipped", file=stream, flush=True)
            continue
        print(f"[{i + 1}/{len(runs)}] {run.name}: {'resuming' if state == 'partial' else 'starting'}",
              file=stream, flush=True)
        proc = subprocess.run([sys.executable, "-m", "vlm_jax.main", *run.argv(Path(directory) / run.name)])
        outcome[run.name] = "ran" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
        if proc.returncode:
            print(f"  {run.name} failed with exit code {proc.returncode}; continuing", file=stream, flush=True)
    return outcome


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}/{k}" if prefix else str(k), v, out)
    elif isinstance(value, (int, float, str, bool)) or value is None:
        out[prefix] = value


def collect(runs: Iterable[Run], directory: Path) -> list[dict[str, Any]]:
    """One row per finished run: name, axis labels, compute (samples seen, forward GMACs per sample, total GMACs
    and FLOPs), params, time, and every final evaluation metric as evals/<set>/<metric>."""
    rows = []
    for run in runs:
        path = Path(directory) / run.name / "results.json"
        if not path.exists():
            continue
        res = json.loads(path.read_text())
        row: dict[str, Any] = {"run": run.name, **dict(run.labels)}
        for key in ("step", "params", "samples_seen", "forward_gmacs_per_sample", "train_gmacs", "train_flops",
                    "train_seconds", "mfu"):
            row[key] = res.get(key)
        _flatten("evals", res.get("evals", {}), row)
        rows.append(row)
    return rows


def write_csv(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Rows with possibly different keys → one CSV (union of columns, first-seen order)."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)
    return path
