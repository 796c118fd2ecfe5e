"""Batched, jitted image/text embedding for evaluators (fixed batch shape: one compile per tower)."""
from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np

from vlm_jax.evals.metrics import l2_normalize

EmbedFn = Callable[[Any, jax.Array], jax.Array]


def _batched(fn: EmbedFn, params: Any, inputs: np.ndarray, batch_size: int) -> np.ndarray:
    """Applies `fn` over fixed-size batches, padding the last one by repeating its final row."""
    outs = []
    for start in range(0, len(inputs), batch_size):
        chunk = inputs[start:start + batch_size]
        n = len(chunk)
        if n < batch_size:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - n, axis=0)])
        outs.append(np.asarray(jax.device_get(fn(params, chunk)))[:n])
    return np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)


class Embedder:
    """Wraps jitted tower functions with their input preparation (tokenizer, image normalisation)."""

    def __init__(self, image_fn: EmbedFn, text_fn: EmbedFn, tokenize: Callable[[list[str]], np.ndarray],
                 batch_size: int = 256):
        self._image_fn, self._text_fn = jax.jit(image_fn), jax.jit(text_fn)
        self.tokenize, self.batch_size = tokenize, batch_size

    def images(self, params: Any, images: np.ndarray) -> np.ndarray:
        """Unit-norm embeddings of float images in [-1, 1], [N, H, W, 3]."""
        return l2_normalize(_batched(self._image_fn, params, np.asarray(images, np.float32), self.batch_size))

    def texts(self, params: Any, texts: list[str]) -> np.ndarray:
        """Unit-norm embeddings of strings."""
        return l2_normalize(_batched(self._text_fn, params, self.tokenize(list(texts)), self.batch_size))
