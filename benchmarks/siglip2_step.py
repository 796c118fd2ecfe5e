"""Train-step time of the SigLIP 2 recipe, a baseline commit against the working tree, side by side in one run.

    scripts/vlm python benchmarks/siglip2_step.py --baseline 74f219f --out benchmarks/siglip2_step.md

Config: experiments/emoji_siglip2.py:size=small with `loss.distill_start=0.0`, so every step runs every loss
(SigLIP, LocCa decoder, SILC self-distillation, TIPS masked prediction). The working tree runs SILC's local crops
at low resolution (loss.local_size 0.5 of the side: a quarter of the patches) and composes scenes only for the
grounding rows; the baseline resized the crops back to the full input size and composed scenes for the batch.

Each version's step runs in its own subprocess (baseline: a `git worktree` of the commit first on PYTHONPATH;
checked through `vlm_jax.__file__`) on one fixed batch from the data pipeline (seed 0) and random-initialised
state (`Setup(config).init_state(jax.random.key(0))`): warm-up steps (the first compiles), then timed steps
`jax.block_until_ready(setup.train_step(state, batch))`. The two subprocesses start together and alternate their
timed steps (old, new, new, old, ...) so both see the same machine load; medians.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(__file__).with_suffix(".md")
CONFIG = "experiments/emoji_siglip2.py:size=small"


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """One version's steps in this process: `warmup` steps, then a timed step per "go" line on stdin."""
    import gc
    import resource

    import jax

    import vlm_jax
    from vlm_jax import sharding as shd
    from vlm_jax.config import load_config
    from vlm_jax.data import robust
    from vlm_jax.train.trainer import Setup, finalize_config

    config = load_config(f"{CONFIG},batch={spec['batch']}")
    config.loss.distill_start = 0.0
    config = finalize_config(config)
    setup = Setup(config)
    it = iter(setup.objective.train_data(config.batch_size, 0, 0, 1))
    host = dict(next(it))
    del it  # no input pipeline work during the timed steps
    gc.collect()
    robust.pop_counts(host)
    shapes = {k: list(v.shape) for k, v in host.items()}
    batch = shd.global_batch(host, setup.batch_sharding)
    state = setup.init_state(jax.random.key(0))
    t0 = time.perf_counter()
    for _ in range(spec["warmup"]):
        state, metrics = setup.train_step(state, batch)
        jax.block_until_ready((state, metrics))
    print(f"READY {time.perf_counter() - t0}", flush=True)
    for line in sys.stdin:  # "go": one timed step; anything else: the summary
        if line.strip() != "go":
            break
        t0 = time.perf_counter()
        state, metrics = setup.train_step(state, batch)
        jax.block_until_ready((state, metrics))
        print(f"TIME {time.perf_counter() - t0}", flush=True)
    m = jax.device_get(metrics)
    keys = ("distill_active", "distill_loss", "masked_loss", "locca_loss", "loss")
    return dict(module=vlm_jax.__file__, shapes=shapes, metrics={k: float(m[k]) for k in keys if k in m},
                maxrss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


class Child:
    """A measurement subprocess with `tree`'s vlm_jax first on the path (cwd = tree), driven over stdin/stdout."""

    def __init__(self, tree: Path, spec: dict[str, Any]):
        env = dict(os.environ, PYTHONPATH=str(tree) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                   VLM_JAX_DATA_DIR=os.environ.get("VLM_JAX_DATA_DIR", str(ROOT / "data_cache")))
        self.tree, self.spec, self.log = tree, spec, tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)],
                                     env=env, cwd=tree, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log, text=True)

    def read(self, tag: str) -> str:
        """The payload of the child's next stdout line starting with `tag` (other lines are skipped)."""
        for line in self.proc.stdout:
            if line.startswith(tag + " "):
                return line[len(tag) + 1:].strip()
        self.log.seek(0)
        raise RuntimeError(f"child {self.spec} in {self.tree} failed:\n{self.log.read()[-3000:]}")

    def call(self) -> float:
        """Seconds of one timed step."""
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        return float(self.read("TIME"))

    def finish(self) -> dict[str, Any]:
        """The child's summary (it exits); checks that it imported vlm_jax from its tree."""
        self.proc.stdin.write("done\n")
        self.proc.stdin.flush()
        res = json.loads(self.read("RESULT"))
        self.proc.wait()
        if not Path(res["module"]).resolve().is_relative_to(self.tree.resolve()):
            raise RuntimeError(f"child meant for {self.tree} imported vlm_jax from {res['module']}")
        return res


def measure(trees: dict[str, Path], spec: dict[str, Any], steps: int) -> dict[str, dict[str, Any]]:
    """Both versions' children started together, then their timed steps alternated old, new, new, old, ...;
    per version the summary with its step times."""
    children = {v: Child(t, spec) for v, t in trees.items()}
    try:
        warm = {v: float(c.read("READY")) for v, c in children.items()}
        times: dict[str, list[float]] = {v: [] for v in children}
        for i in range(steps):
            for v in (("old", "new") if i % 2 == 0 else ("new", "old")):
                times[v].append(children[v].call())
        return {v: dict(c.finish(), times=times[v], warm_s=warm[v]) for v, c in children.items()}
    finally:
        for c in children.values():
            if c.proc.poll() is None:
                c.proc.kill()


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def baseline_tree(commit: str) -> tuple[Path, bool]:
    """A worktree of `commit` (the existing /tmp/vlm_old when it is at that commit); True if created here."""
    sha = subprocess.run(["git", "-C", str(ROOT), "rev-parse", commit], capture_output=True, text=True,
                         check=True).stdout.strip()
    old = Path("/tmp/vlm_old")
    if old.is_dir() and subprocess.run(["git", "-C", str(old), "rev-parse", "HEAD"], capture_output=True,
                                       text=True).stdout.strip() == sha:
        return old, False
    tree = Path(tempfile.mkdtemp(prefix="vlm_baseline_")) / "tree"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), sha], check=True,
                   capture_output=True)
    return tree, True


def main() -> None:
    """Interleaved baseline/current train steps; prints and writes the table."""
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        print("RESULT " + json.dumps(child(json.loads(sys.argv[2]))), flush=True)
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="74f219f", help="commit of the old code")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (the first compiles)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per version")
    args = parser.parse_args()
    command = "scripts/vlm python benchmarks/siglip2_step.py " + " ".join(sys.argv[1:])
    tree, created = baseline_tree(args.baseline)
    start = time.perf_counter()
    try:
        res = measure({"old": tree, "new": ROOT}, dict(batch=args.batch, warmup=args.warmup), args.steps)
    finally:
        if created:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)
    total = time.perf_counter() - start
    for v, r in res.items():
        print(f"{v}: steps {[round(t, 3) for t in r['times']]} s, warm-up {r['warm_s']:.1f} s, "
              f"{r['maxrss_mib']:.0f} MiB, batch {r['shapes']}, metrics {r['metrics']}", flush=True)
    step = {v: statistics.median(r["times"]) for v, r in res.items()}
    active = {v: r["metrics"].get("distill_active", float("nan")) for v, r in res.items()}
    lines = [
        "# SigLIP 2 train step: low-resolution local crops and grounding-only scenes (current tree) vs baseline", "",
        f"Generated {datetime.date.today()} by `{command}` in {total:.0f} s; CPU: {cpu_model()} "
        f"({os.cpu_count()} cores), XLA:CPU.", "",
        f"- old = commit {args.baseline} (a git worktree first on PYTHONPATH), new = the working tree. The numbers "
        "are ratios measured side by side on this shared machine (other work may have been running): compare "
        "old with new, not with other machines or pages.",
        f"- `{CONFIG},batch={args.batch}` with `loss.distill_start=0.0` (every loss on from step 0: "
        f"distill_active old {active['old']:g}, new {active['new']:g}), random-initialised state, one fixed "
        "batch from the data pipeline (seed 0); new uses its default loss.local_size 0.5.",
        f"- s/step = median of {args.steps} timed `jax.block_until_ready(setup.train_step(state, batch))` calls per "
        f"version after {args.warmup} warm-up steps (the first compiles); each version in its own subprocess, "
        "the two started together, timed steps alternating old, new, new, old, ...",
        "- peak MiB = ru_maxrss of the version's subprocess (imports, data, state, compilation and steps); "
        "compilation dominates it, and across trial runs it moved by a few hundred MiB either way, so it is "
        "no evidence for a memory change.", "",
        "| batch | old s/step | new s/step | ratio (new/old) | speedup (old/new) | old peak MiB | new peak MiB |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        f"| {args.batch} | {step['old']:.3f} | {step['new']:.3f} | {step['new'] / step['old']:.2f} | "
        f"{step['old'] / step['new']:.2f}× | {res['old']['maxrss_mib']:,.0f} | {res['new']['maxrss_mib']:,.0f} |",
    ]
    text = "\n".join(lines) + "\n"
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
