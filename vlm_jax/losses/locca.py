"""LocCa's decoder tasks (Wan et al. 2024) as teacher-forced sequences over the text vocabulary extended with
three task tokens and box-coordinate bins: captioning (CAP caption EOS), referring expression (REF caption →
box EOS) and grounded captioning (GCAP box → caption EOS). The loss covers the predicted part only."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
TASKS = ("cap", "ref", "gcap")
BOX_TOKENS = 4


def box_bins(boxes: Array, bins: int) -> Array:
    """Boxes in [0, 1] → int bins in [0, bins): round(coordinate · (bins − 1))."""
    return jnp.clip(jnp.round(boxes * (bins - 1)), 0, bins - 1).astype(jnp.int32)


def task_sequences(captions: Array, box_ids: Array, task: Array, eos: int, pad: int,
                   task_ids: tuple[int, int, int]) -> tuple[Array, Array]:
    """(sequences [B, L + 6], predicted bool [B, L + 6]) from caption ids [B, L] (EOS-terminated, padded), box token
    ids [B, 4] and task index [B] (0 cap, 1 ref, 2 gcap); position 0 holds the task token."""
    b, length = captions.shape
    idx = jnp.arange(length + 2 + BOX_TOKENS)[None, :]
    n = jnp.argmax(captions == eos, axis=1)[:, None]  # caption tokens before EOS
    word = lambda offset: jnp.take_along_axis(captions, jnp.clip(idx - offset, 0, length - 1), axis=1)  # noqa: E731
    box = lambda offset: jnp.take_along_axis(box_ids, jnp.clip(idx - offset, 0, BOX_TOKENS - 1), axis=1)  # noqa: E731
    cap, ref, gcap = task_ids
    tail = lambda end: jnp.where(idx == end, eos, pad)  # noqa: E731
    seq_cap = jnp.where(idx == 0, cap, jnp.where(idx <= n, word(1), tail(n + 1)))
    seq_ref = jnp.where(idx == 0, ref, jnp.where(idx <= n, word(1), jnp.where(idx <= n + BOX_TOKENS,
                                                                              box(n + 1), tail(n + 5))))
    seq_gcap = jnp.where(idx == 0, gcap, jnp.where(idx <= BOX_TOKENS, box(1), jnp.where(idx <= n + BOX_TOKENS,
                                                                                      word(5), tail(n + 5))))
    pred_cap = (idx >= 1) & (idx <= n + 1)
    pred_ref = (idx >= n + 1) & (idx <= n + 5)
    pred_gcap = (idx >= 5) & (idx <= n + 5)
    t = task[:, None]
    seq = jnp.where(t == 0, seq_cap, jnp.where(t == 1, seq_ref, seq_gcap)).astype(jnp.int32)
    pred = jnp.where(t == 0, pred_cap, jnp.where(t == 1, pred_ref, pred_gcap))
    return seq, pred


def bins_to_boxes(bins: Array, n_bins: int) -> Array:
    """Box-coordinate bins in [0, n_bins) → coordinates in [0, 1] (the inverse of `box_bins` up to its rounding)."""
    return bins.astype(jnp.float32) / (n_bins - 1)


def grounding_rows(batch: int) -> np.ndarray:
    """The rows of a batch that get a grounded task (REF or GCAP, on a composed scene): every row but each third
    (rows 0, 3, 6 … caption their own image), so about a third of the rows captions, as a uniform draw over the
    three tasks would; the data's order is random, so a fixed row → task map is a random assignment."""
    return np.flatnonzero(np.arange(batch) % 3 != 0).astype(np.int32)
