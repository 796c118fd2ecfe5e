"""Per-device memory of DP vs FSDP vs TP (compiled memory_analysis) and step time on 1/2/4/8 CPU devices.

Run: scripts/vlm python benchmarks/sharding.py   → prints and writes benchmarks/sharding.md
Simulates 8 devices on the host CPU (XLA_FLAGS), so step times measure overheads, not speed-ups.
"""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import time  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import flags  # noqa: E402

from vlm_jax import sharding as shd  # noqa: E402
from vlm_jax.config import apply_overrides, load_config  # noqa: E402
from vlm_jax.train.trainer import Setup, finalize_config  # noqa: E402

MEMORY_MESHES = {"DP 8": [("data", 8)], "FSDP 8": [("fsdp", 8)], "DP 4 × TP 2": [("data", 4), ("tensor", 2)],
                 "DP 2 × FSDP 2 × TP 2": [("data", 2), ("fsdp", 2), ("tensor", 2)]}
# a wider model than the default run, so parameter memory dominates
WIDE = ["model.image.width=512", "model.image.mlp_dim=2048", "model.image.num_heads=8", "model.text.width=512",
        "model.text.mlp_dim=2048", "model.text.num_heads=8", "model.embed_dim=512", "batch_size=64"]


def _setup(mesh, extra=()):
    c = finalize_config(load_config("experiments/emoji_two_tower.py"))
    return Setup(apply_overrides(c, [f"mesh={mesh!r}", *extra]))


def _batch(setup, n):
    rng = np.random.default_rng(0)
    s, l = setup.objective.data.image_size, setup.objective.data.text_len
    return {"image": rng.uniform(-1, 1, (n, s, s, 3)).astype(np.float32),
            "text": rng.integers(3, setup.objective.data.vocab_size, (n, l)).astype(np.int32)}


def memory_rows():
    rows = []
    for name, mesh in MEMORY_MESHES.items():
        setup = _setup(mesh, WIDE)
        abstract = setup.abstract_state()
        batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=setup.batch_sharding),
                             _batch(setup, 64))
        mem = setup.train_step.compile(abstract, batch).memory_analysis()
        state_bytes = sum(int(np.prod(s.shard_shape(a.shape))) * a.dtype.itemsize
                          for a, s in zip(jax.tree.leaves(abstract), jax.tree.leaves(setup.state_shardings)))
        rows.append((name, state_bytes / 2 ** 20, mem.temp_size_in_bytes / 2 ** 20))
    return rows


def time_rows():
    rows = []
    for n in (1, 2, 4, 8):
        setup = _setup([("data", n)])
        state = setup.init_state(jax.random.key(0))
        batch = shd.global_batch(_batch(setup, 256), setup.batch_sharding)
        state, m = setup.train_step(state, batch)
        jax.block_until_ready(m)
        t = time.perf_counter()
        for _ in range(5):
            state, m = setup.train_step(state, batch)
        jax.block_until_ready(m)
        rows.append((n, (time.perf_counter() - t) / 5))
    return rows


def main() -> None:
    flags.FLAGS.mark_as_parsed()
    mem = memory_rows()
    times = time_rows()
    lines = ["# Sharding benchmark (8 simulated CPU devices)", "",
             "Per-device memory of the train step for a width-512 two-tower model (batch 64), from "
             "`compile().memory_analysis()` and the shard shapes of the train state:", "",
             "| mesh | params + optimizer state per device (MiB) | XLA temp per device (MiB) |", "|---|---:|---:|"]
    lines += [f"| {n} | {s:.1f} | {t:.1f} |" for n, s, t in mem]
    lines += ["", "Default model (1.6M params), global batch 256, data-parallel over n devices of the same 2 cores:", "",
              "| devices | step time (s) | relative to 1 device |", "|---:|---:|---:|"]
    lines += [f"| {n} | {t:.3f} | {t / times[0][1]:.2f}× |" for n, t in times]
    text = "\n".join(lines) + "\n"
    print(text)
    Path(__file__).with_suffix(".md").write_text(text)


if __name__ == "__main__":
    main()
