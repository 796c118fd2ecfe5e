"""Batched, jitted image/text embedding for evaluators (fixed batch shape: one compile per tower).

Works on any mesh and across hosts: every process holds the same eval inputs, each batch becomes a global
array sharded over the mesh's batch axes (`make_array_from_callback`), and outputs come back replicated
so every process reads the full result.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, ContextManager

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding

from vlm_jax import sharding as shd
from vlm_jax.evals.metrics import l2_normalize

EmbedFn = Callable[[Any, jax.Array], jax.Array]


def mesh_of(params: Any) -> Any:
    """The mesh the parameters live on (None for unsharded arrays)."""
    leaf = jax.tree.leaves(params)[0]
    sharding = getattr(leaf, "sharding", None)
    return sharding.mesh if isinstance(sharding, NamedSharding) else None


class Embedder:
    """Wraps tower functions with their input preparation (tokenizer, image normalisation)."""

    def __init__(self, image_fn: EmbedFn, text_fn: EmbedFn | None, tokenize: Callable[[list[str]], np.ndarray] | None,
                 batch_size: int = 256, context: Callable[[], ContextManager] = contextlib.nullcontext):
        # `context`: entered while tracing the towers (the trainer's mesh + logical axis rules)
        self._fns = {"image": image_fn, "text": text_fn}
        self._context = context
        self._jitted: dict[tuple[str, Any], Callable] = {}
        self.tokenize, self.batch_size = tokenize, batch_size

    def _compiled(self, kind: str, mesh: Any) -> Callable:
        key = (kind, mesh)
        if key not in self._jitted:
            out = shd.replicated(mesh) if mesh is not None else None
            fn = self._fns[kind]

            def traced(params: Any, x: jax.Array, fn: EmbedFn = fn) -> jax.Array:
                with self._context():
                    return fn(params, x)

            self._jitted[key] = jax.jit(traced, out_shardings=out)
        return self._jitted[key]

    def _batched(self, kind: str, params: Any, inputs: Any) -> np.ndarray:
        """Applies a tower over fixed-size batches, padding the last one by repeating its final row; `inputs` is
        an array or a tuple of equally long arrays (the function then takes the tuple)."""
        mesh = mesh_of(params)
        fn = self._compiled(kind, mesh)
        in_sharding = shd.batch_sharding(mesh) if mesh is not None else None
        if in_sharding is not None and self.batch_size % shd.axes_size(mesh, in_sharding.spec[0]):
            in_sharding = shd.replicated(mesh)  # batch not divisible by the batch axes: feed it whole
        total = len(jax.tree.leaves(inputs)[0])
        outs = []
        for start in range(0, total, self.batch_size):
            n = min(self.batch_size, total - start)

            def prepare(x: np.ndarray) -> Any:
                chunk = x[start:start + self.batch_size]
                if n < self.batch_size:
                    chunk = np.concatenate([chunk, np.repeat(chunk[-1:], self.batch_size - n, axis=0)])
                if in_sharding is None:
                    return chunk
                return jax.make_array_from_callback(chunk.shape, in_sharding, lambda idx, c=chunk: c[idx])

            outs.append(np.asarray(jax.device_get(fn(params, jax.tree.map(prepare, inputs))))[:n])
        return np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)

    def apply(self, params: Any, *inputs: np.ndarray) -> np.ndarray:
        """The image function's raw outputs on equally long input arrays (one: the array; several: their tuple)."""
        return self._batched("image", params, inputs[0] if len(inputs) == 1 else tuple(inputs))

    def features(self, params: Any, images: np.ndarray) -> np.ndarray:
        """The image function's raw outputs on float images in [-1, 1], [N, H, W, 3] (not normalised)."""
        return self.apply(params, np.asarray(images, np.float32))

    def images(self, params: Any, images: np.ndarray | dict[str, np.ndarray]) -> np.ndarray:
        """Unit-norm embeddings of float images in [-1, 1], [N, H, W, 3], or of a NaFlex batch (a dict of arrays
        with leading axis N, `data.naflex.eval_inputs`)."""
        inputs = images if isinstance(images, dict) else np.asarray(images, np.float32)
        return l2_normalize(self._batched("image", params, inputs))

    def texts(self, params: Any, texts: list[str]) -> np.ndarray:
        """Unit-norm embeddings of strings."""
        return l2_normalize(self._batched("text", params, self.tokenize(list(texts))))

    def class_embeddings(self, params: Any, names: list[str], templates: list[str]) -> np.ndarray:
        """Prompt-ensembled class representations: the mean of each template's unit embedding, renormalised."""
        embs = [self.texts(params, [t.format(n) for n in names]) for t in templates]
        return l2_normalize(np.mean(embs, axis=0))

    def similarity(self, images: np.ndarray, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(image→text scores, text→image scores), both [Q, C], of image representations against class (text)
        representations: for single embeddings both are the cosines; `classes` [S, C, F] (several references
        per class) takes the best."""
        from vlm_jax.evals.zeroshot import similarity_scores

        scores = similarity_scores(images, classes)
        return scores, scores


class RawEmbedder(Embedder):
    """Representations that are not single unit vectors (token sets, mixtures): `images` and `texts` return the
    tower functions' outputs as they are, and `similarity` works on them in blocks of `chunk` query images."""

    def __init__(self, *args: Any, chunk: int = 64, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.chunk = chunk  # query images per similarity block

    def images(self, params: Any, images: np.ndarray | dict[str, np.ndarray]) -> np.ndarray:
        inputs = images if isinstance(images, dict) else np.asarray(images, np.float32)
        return self._batched("image", params, inputs)

    def texts(self, params: Any, texts: list[str]) -> np.ndarray:
        return self._batched("text", params, self.tokenize(list(texts)))


class LateInteractionEmbedder(RawEmbedder):
    """Token sets instead of single embeddings (FILIP): `images` / `texts` give unit-norm token embeddings
    [N, T, D] with zero vectors at padding, classes keep one token set per template [S, C, T, D], and `similarity`
    is FILIP's token-wise late interaction (`losses.filip.filip_similarity`), averaged over the templates."""

    def class_embeddings(self, params: Any, names: list[str], templates: list[str]) -> np.ndarray:
        return np.stack([self.texts(params, [t.format(n) for n in names]) for t in templates])

    @staticmethod
    @jax.jit
    def _block(queries: jax.Array, classes: jax.Array) -> tuple[jax.Array, jax.Array]:
        from vlm_jax.losses.filip import filip_similarity

        qmask, cmask = jnp.any(queries != 0, axis=-1), jnp.any(classes != 0, axis=-1)
        return filip_similarity(queries, classes, cmask, qmask)

    def similarity(self, images: np.ndarray, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(s^I, s^T) [Q, C] averaged over the class templates (`classes` [S, C, T, D] or one set [C, T, D])."""
        sets = classes if classes.ndim == 4 else classes[None]
        n = len(images)
        i2t, t2i = np.zeros((n, sets.shape[1])), np.zeros((n, sets.shape[1]))
        size = min(self.chunk, n)
        padded = np.concatenate([images, np.repeat(images[-1:], -n % size, axis=0)]) if n else images
        for template in sets:
            for start in range(0, n, size):  # equal blocks (the last one padded): one compilation
                s_i, s_t = self._block(padded[start:start + size], template)
                stop = min(start + size, n)
                i2t[start:stop] += np.asarray(s_i)[:stop - start] / len(sets)
                t2i[start:stop] += np.asarray(s_t)[:stop - start] / len(sets)
        return i2t, t2i


class MixtureEmbedder(RawEmbedder):
    """Caption-conditioned image embeddings (Llip): `images` gives each image's mixture-token keys and values
    concatenated [N, K, 2D], `texts` each text's unit embedding and its query [N, 2D], and `similarity` pools an
    image's values with each text's query (`losses.llip.llip_similarity`). The query is linear in the unit
    embedding, so a prompt-ensembled class (the templates' mean embedding, renormalised) keeps an exact query."""

    def __init__(self, *args: Any, tau: float, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.tau = float(tau)

    def class_embeddings(self, params: Any, names: list[str], templates: list[str]) -> np.ndarray:
        mean = np.mean([self.texts(params, [t.format(n) for n in names]) for t in templates], axis=0)
        d = mean.shape[-1] // 2
        return mean / np.maximum(np.linalg.norm(mean[:, :d], axis=-1, keepdims=True), 1e-12)

    @functools.partial(jax.jit, static_argnums=(0,))
    def _block(self, queries: jax.Array, classes: jax.Array) -> jax.Array:
        from vlm_jax.losses.llip import llip_similarity

        d = classes.shape[-1] // 2
        return llip_similarity(queries[..., :d], queries[..., d:], classes[:, d:], classes[:, :d], self.tau)

    def similarity(self, images: np.ndarray, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The [Q, C] scores, the same in both directions (each pair's image pooled by its text)."""
        n = len(images)
        size = max(min(self.chunk, n), 1)
        padded = np.concatenate([images, np.repeat(images[-1:], -n % size, axis=0)]) if n else images
        blocks = [np.asarray(self._block(padded[s:s + size], classes)) for s in range(0, n, size)]
        scores = np.concatenate(blocks)[:n] if blocks else np.zeros((0, len(classes)), np.float32)
        return scores, scores


class QueryMaxEmbedder(RawEmbedder):
    """Several unit embeddings per image (BLIP-2's query outputs, [N, Q, D]) against one unit embedding per text:
    the score of an image and a text is the best of its queries' cosines (BLIP-2's image–text similarity).
    `texts` returns unit vectors (the text function normalises), so prompt ensembling is the base class's."""

    def class_embeddings(self, params: Any, names: list[str], templates: list[str]) -> np.ndarray:
        return Embedder.class_embeddings(self, params, names, templates)

    def similarity(self, images: np.ndarray, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(max over queries of images [N, Q, D] · classes [C, D]) [N, C], both directions; classes [S, C, D]
        (several references per class) take the best reference too."""
        refs = classes if classes.ndim == 3 else classes[None]
        scores = np.max(np.einsum("nqd,scd->ncsq", images, refs), axis=(2, 3))
        return scores, scores
