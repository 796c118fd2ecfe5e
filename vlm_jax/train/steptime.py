"""Timing the real train step on a fixed random batch (the benchmarks' shared measurement)."""
from __future__ import annotations

import statistics
import time
from typing import Any

import jax
import numpy as np

from vlm_jax import sharding as shd


def random_batch(setup: Any, vocab_size: int, seed: int = 0) -> dict[str, jax.Array]:
    """A global batch of the objective's shapes: floats uniform in [-1, 1], token ids in [3, vocab_size)."""
    rng = np.random.default_rng(seed)
    shapes = setup.objective.init_batch(setup.config.batch_size)
    host = {k: (rng.uniform(-1, 1, v.shape).astype(np.float32) if v.dtype == np.float32
                else rng.integers(3, vocab_size, v.shape).astype(np.int32)) for k, v in shapes.items()}
    return shd.global_batch(host, setup.batch_sharding)


def time_steps(setup: Any, batch: dict[str, jax.Array], steps: int) -> dict[str, Any]:
    """First (compiling) step time, median of `steps` more, the last metrics and the state."""
    state = setup.init_state(jax.random.key(0))
    t0 = time.perf_counter()
    state, metrics = setup.train_step(state, batch)
    jax.block_until_ready(metrics)
    first = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        state, metrics = setup.train_step(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    return dict(first_step_s=first, step_s=statistics.median(times), metrics=metrics, state=state)
