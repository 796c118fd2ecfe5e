"""Splitting a batch into micro-batches that each span every device of the batch axes."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def split_microbatches(batch: Any, n: int) -> Any:
    """Leaves [B, ...] → [n, B/n, ...] where micro-batch k holds rows k, k+n, k+2n, …

    Strided, not contiguous: with the batch sharded in contiguous blocks over the devices, every device holds
    B/(n·devices) rows of every micro-batch, so all devices work on each one.
    """
    def split(x: jax.Array) -> jax.Array:
        if x.shape[0] % n:
            raise ValueError(f"batch {x.shape[0]} does not split into {n} micro-batches")
        y = jnp.swapaxes(x.reshape(x.shape[0] // n, n, *x.shape[1:]), 0, 1)
        return nn.with_logical_constraint(y, (None, "batch") + (None,) * (x.ndim - 1))
    return jax.tree.map(split, batch)


def merge_microbatches(micro: Any) -> Any:
    """Inverse of `split_microbatches`: [n, B/n, ...] → [B, ...] in the original row order."""
    return jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1).reshape(x.shape[0] * x.shape[1], *x.shape[2:]), micro)
