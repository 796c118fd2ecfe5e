"""Is the default run's input pipeline ahead of its train step? Measured alone and together, in one run.

    scripts/vlm python benchmarks/pipeline_vs_step.py   → benchmarks/pipeline_vs_step.md

Rows: the grain pipeline alone (items/s, after a warm-up that fills its decode cache), the step alone on a fixed
batch (samples/s, 1 and 2 host devices, each in its own process), and both together as `train()` runs them.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

CONFIG = "experiments/emoji_two_tower.py"
ROOT = Path(__file__).resolve().parents[1]


def child(kind: str, steps: int = 30) -> dict:
    """One measurement in this process."""
    import jax

    from vlm_jax import sharding as shd
    from vlm_jax.config import load_config
    from vlm_jax.data import robust
    from vlm_jax.train.trainer import Setup, finalize_config

    config = finalize_config(load_config(CONFIG))
    setup = Setup(config)
    it = iter(setup.objective.train_data(config.batch_size, 0, 0, 1))
    batches = [dict(next(it)) for _ in range(steps)]  # warm-up: one pass fills the decode cache
    if kind == "pipeline":
        t0 = time.perf_counter()
        for _ in range(steps):
            next(it)
        return dict(rate=steps * config.batch_size / (time.perf_counter() - t0))
    for b in batches:
        robust.pop_counts(b)
    state = setup.init_state(jax.random.key(0))
    device_batches = [shd.global_batch(b, setup.batch_sharding) for b in batches]
    if kind == "step":
        state, m = setup.train_step(state, device_batches[0])
        jax.block_until_ready(m)
        t0 = time.perf_counter()
        for b in device_batches:
            state, m = setup.train_step(state, b)
        jax.block_until_ready(m)
        return dict(rate=steps * config.batch_size / (time.perf_counter() - t0))
    state, m = setup.train_step(state, device_batches[0])  # "together": the data read inside the loop
    jax.block_until_ready(m)
    t0 = time.perf_counter()
    for _ in range(steps):
        host = dict(next(it))
        robust.pop_counts(host)
        state, m = setup.train_step(state, shd.global_batch(host, setup.batch_sharding))
    jax.block_until_ready(m)
    return dict(rate=steps * config.batch_size / (time.perf_counter() - t0))


def spawn(kind: str, devices: int) -> float:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    proc = subprocess.run([sys.executable, __file__, "--child", kind], env=env, capture_output=True, text=True,
                          cwd=ROOT)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(lines[-1][7:])["rate"]


def main() -> None:
    if "--child" in sys.argv:
        print("RESULT " + json.dumps(child(sys.argv[sys.argv.index("--child") + 1])), flush=True)
        return
    rows = [("input pipeline alone (items/s)", spawn("pipeline", 1))]
    for devices in (1, 2):
        rows.append((f"train step alone, {devices} host device(s) (samples/s)", spawn("step", devices)))
        rows.append((f"pipeline + step as train() runs them, {devices} host device(s) (samples/s)",
                     spawn("together", devices)))
    step2 = rows[3][1]
    lines = ["# Input pipeline vs train step (default config)", "",
             f"Measured {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, `scripts/vlm python "
             "benchmarks/pipeline_vs_step.py`; the pipeline and the step share the same cores.", "",
             "| what | rate |", "|---|---:|"] + [f"| {name} | {rate:,.0f} |" for name, rate in rows] + [
             "", f"Pipeline alone / step alone on 2 devices: {rows[0][1] / step2:.2f}×."]
    out = Path(__file__).with_suffix(".md")
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
