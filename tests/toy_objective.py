"""A toy objective for trainer tests: per-example linear regression whose `extra` counts what it sees.

Its loss is a mean of per-example terms, so gradient accumulation must reproduce the big-batch gradient; its
data is a fixed, unshuffled array stream (optionally with a NaN row) so tests know every batch.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vlm_jax.train.objective import Normalizers, LossOut, Objective, register

DIM = 8
NUM_EXAMPLES = 4096


def toy_data(nan_row: int = -1) -> dict[str, np.ndarray]:
    """x [N, DIM], y [N] from a fixed linear map plus noise; row `nan_row` (if ≥ 0) gets a NaN input."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(NUM_EXAMPLES, DIM)).astype(np.float32)
    y = (x @ np.linspace(-1, 1, DIM) + 0.1 * rng.normal(size=NUM_EXAMPLES)).astype(np.float32)
    if nan_row >= 0:
        x[nan_row, 0] = np.nan
    return {"x": x, "y": y, "index": np.arange(NUM_EXAMPLES, dtype=np.int32)}


class Linear(nn.Module):
    """y = x·w + c, with logically partitioned parameters."""

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> tuple[jax.Array, dict]:
        dense = nn.Dense(1, kernel_init=nn.with_logical_partitioning(nn.initializers.normal(1.0), ("embed", None)),
                         bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (None,)))
        return dense(x)[:, 0], {}


@register("toy_regression")
class ToyRegression(Objective):
    """Squared error per example; `extra` counts loss calls and rows, and sums the example indices seen."""

    CONFIG_DEFAULTS = {"data": dict(nan_row=-1)}

    def model(self) -> nn.Module:
        return Linear()

    def init_batch(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
        return {"x": jax.ShapeDtypeStruct((batch_size, DIM), jnp.float32)}

    def init_extra(self, params: Any) -> Any:
        return {"calls": jnp.zeros((), jnp.int32), "rows": jnp.zeros((), jnp.int32),
                "index_sum": jnp.zeros((), jnp.int32)}

    def loss(self, params: Any, extra: Any, batch: dict[str, jax.Array], rng: jax.Array, train: bool = True,
             norm: Normalizers | None = None) -> LossOut:
        pred, _ = self.model().apply({"params": params}, batch["x"])
        loss = jnp.mean((pred - batch["y"]) ** 2)
        extra = {"calls": extra["calls"] + 1, "rows": extra["rows"] + batch["x"].shape[0],
                 "index_sum": extra["index_sum"] + jnp.sum(batch["index"])}
        return loss, ({"mse": loss}, extra)

    def train_data(self, batch_size: int, seed: int, process_index: int, process_count: int) -> Any:
        data = toy_data(int(self.config.data.get("nan_row", -1)))
        rows = [{k: v[i] for k, v in data.items()} for i in range(NUM_EXAMPLES)]
        ds = grain.MapDataset.source(rows).repeat(None)[process_index::process_count]
        return ds.batch(batch_size, drop_remainder=True).to_iter_dataset()


def toy_config(**overrides: Any) -> ml_collections.ConfigDict:
    """A plain-SGD toy config (lr 1, no clipping/decay/warmup): after one step, params = init − gradient."""
    c = ml_collections.ConfigDict()
    c.objective = "toy_regression"
    c.total_steps = 1
    c.batch_size = 64
    c.mesh = [("data", 1)]
    c.progress = False
    c.log_every = 1
    c.optim = dict(name="sgd", lr=1.0, weight_decay=0.0, clip_norm=0.0, warmup_steps=0, schedule="constant")
    c.checkpoint = dict(every_steps=0, async_save=False)
    c.update(overrides)
    return c
