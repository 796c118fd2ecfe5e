"""RA-CLIP (Xie et al. 2023) on the two-tower trainer: a held-out reference set of image–text pairs (the seen
concepts of a drawing style the training stream never uses, `reference_style`) embedded once by frozen encoders —
the images by their standardised pixels at `pixel_side` (no DINO is packaged: the pixel-NN baseline's features), the
captions (the concepts' English names) by the packaged MiniLM sentence encoder — and, for every image, in training
and evaluation alike, its `top_k` nearest reference images by pixel correlation; their pairs enrich the image
embedding through a one-head attention module (`TwoTower.retrieval_dims`: the image embedding queries the retrieved
images' features, reads their captions' embeddings, adds the read-out through a zero-initialised projection).
CLIP's InfoNCE on the enriched embeddings. The module's exact form (query, keys, values, residual) is our reading:
the paper's method section was not available to us."""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vlm_jax.evals.embedder import Embedder
from vlm_jax.models.two_tower import TwoTower
from vlm_jax.objectives.contrastive import ContrastiveObjective, Towers
from vlm_jax.train.objective import Normalizers, register

# reference_style: the held-out drawing style (not in data.train_styles); top_k: reference pairs per image;
# pixel_side: the side of the area-averaged image whose standardised pixels retrieve (16: 768 features)
RACLIP_DEFAULTS = dict(reference_style="facebook", top_k=8, pixel_side=16)


def retrieval_pixels(images: jax.Array, side: int) -> jax.Array:
    """Images [B, S, S, C] → unit rows [B, side²·C] of their area-averaged pixels minus each row's mean (a dot
    product is a correlation, as the pixel-NN baseline's)."""
    b, s, _, c = images.shape
    k = s // side
    x = images.astype(jnp.float32).reshape(b, side, k, side, k, c).mean(axis=(2, 4)).reshape(b, -1)
    x = x - jnp.mean(x, axis=1, keepdims=True)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=1, keepdims=True), 1e-12))


def minilm_sentence_embeddings(texts: list[str], max_len: int = 64, batch: int = 256) -> np.ndarray:
    """Unit sentence embeddings float32 [N, 384] of the packaged MiniLM-L6 (mean over the non-pad tokens, then L2, as
    sentence-transformers' all-MiniLM-L6-v2); texts are cut at `max_len` tokens. Memoised per process."""
    return _minilm_embeddings(tuple(texts), int(max_len), int(batch)).copy()


@functools.lru_cache(maxsize=4)
def _minilm_embeddings(texts: tuple[str, ...], max_len: int, batch: int) -> np.ndarray:
    """`minilm_sentence_embeddings`: texts sorted by length and run in batches cut to their longest (a multiple of
    8), which the mean over non-pad tokens makes exact."""
    from flax import traverse_util

    from vlm_jax.data.wordpiece import WordPieceTokenizer
    from vlm_jax.models.bert import BertEncoder
    from vlm_jax.pretrained import minilm, minilm_dir

    fields, flat = minilm()
    encoder = BertEncoder(**fields)
    params = traverse_util.unflatten_dict(flat, sep="/")
    tokens = np.asarray(WordPieceTokenizer(minilm_dir() / "vocab.txt").encode(list(texts), max_len))
    lengths = np.sum(tokens != fields["pad_id"], axis=1)
    order = np.argsort(lengths, kind="stable")
    apply = jax.jit(lambda t: encoder.apply({"params": params}, t)[0])
    out = np.zeros((len(texts), fields["width"]), np.float32)
    for start in range(0, len(texts), batch):
        rows = order[start:start + batch]
        cut = min(max_len, -(-int(lengths[rows].max()) // 8) * 8)
        chunk = tokens[rows, :cut]
        padded = np.concatenate([chunk, np.repeat(chunk[-1:], batch - len(rows), axis=0)])
        out[rows] = np.asarray(apply(jnp.asarray(padded)))[:len(rows)]
    out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    out.flags.writeable = False
    return out


@register("raclip")
class RACLIPObjective(ContrastiveObjective):
    """CLIP's loss on image embeddings enriched by retrieved reference pairs."""

    NAFLEX = False  # retrieval reads square pixel images
    OWN_LOSS_DEFAULTS = RACLIP_DEFAULTS

    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        self.top_k, self.pixel_side = int(self.cfg["top_k"]), int(self.cfg["pixel_side"])
        size = self.data.image_size
        if self.top_k < 1 or self.pixel_side < 1 or size % self.pixel_side:
            raise ValueError(f"loss.top_k must be >= 1 and loss.pixel_side divide the image size {size}, got "
                             f"{self.top_k}, {self.pixel_side}")
        if not hasattr(self.data, "held_out_pairs"):
            raise ValueError("RA-CLIP holds a drawing style out as its reference set: it needs the emoji data")
        self.reference_style = str(self.cfg["reference_style"])
        if self.reference_style in self.data.train_styles:
            raise ValueError(f"loss.reference_style {self.reference_style!r} is a training style: the reference set is "
                             f"held out of training; remove it from data.train_styles {list(self.data.train_styles)}")
        images, names = self.data.held_out_pairs(self.reference_style)
        if len(names) < self.top_k:
            raise ValueError(f"the reference set has {len(names)} pairs, fewer than loss.top_k {self.top_k}")
        # the reference set, embedded once, outside any trace: "pixels" [R, P] (retrieval keys), "text" [R, 384]
        self.reference = {"pixels": np.asarray(jax.jit(retrieval_pixels, static_argnums=1)(images, self.pixel_side)),
                          "text": minilm_sentence_embeddings(names), "names": names}

    def model(self) -> nn.Module:
        base = super().model()
        dims = (3 * self.pixel_side ** 2, 384)
        return TwoTower(image=base.image, text=base.text, embed_dim=base.embed_dim,
                        temperature_init=base.temperature_init, bias_init=base.bias_init, text_tower=base.text_tower,
                        retrieval_dims=dims)

    def retrieve(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(pixel features [B, k, P], caption embeddings [B, k, 384]) of each image's `top_k` most correlated
        reference images, nearest first."""
        ref = self.reference
        pixels = jnp.asarray(ref["pixels"])
        sims = retrieval_pixels(images, self.pixel_side) @ pixels.T
        _, idx = jax.lax.top_k(jax.lax.stop_gradient(sims), self.top_k)
        return pixels[idx], jnp.asarray(ref["text"])[idx]

    def _towers(self, params: Any, extra: Any, batch: dict[str, jax.Array], rng: jax.Array, train: bool = True,
                norm: Normalizers | None = None) -> Towers:
        (zimg, ztxt), aux = self.model().apply({"params": params}, batch["image"], batch["text"], train=train,
                                               retrieved=self.retrieve(batch["image"]), rngs={"dropout": rng})
        return Towers(zimg, ztxt, aux["t"], aux.get("b"), jnp.zeros((), jnp.float32), {}, extra)

    @functools.cached_property
    def embedder(self) -> Embedder:
        """The evaluators' image embedding retrieves from the reference set, as in training."""
        model = self.model()
        image_fn = lambda p, x: model.apply({"params": p}, x, None, retrieved=self.retrieve(x))[0][0]  # noqa: E731
        text_fn = lambda p, t: model.apply({"params": p}, None, t)[0][1]  # noqa: E731
        return Embedder(image_fn, text_fn, self.data.tokenize, batch_size=self.config.evals.get("batch_size", 256),
                        context=lambda: self.trace_context())

    def forward_flops(self, batch: dict[str, Any], phase: int = 0) -> dict[str, float]:
        """The towers, the retrieval's correlations (forward only) and the module: the query and output maps, the
        keys and values of the retrieved constants (no input gradient) and the attention over k pairs."""
        from vlm_jax.scaling.compute import dense

        out = super().forward_flops(batch, phase)
        b, d, k = batch["image"].shape[0], int(self.config.model.embed_dim), self.top_k
        p, t = 3 * self.pixel_side ** 2, 384
        r = len(self.reference["names"])
        out["retrieval_module"] = 2 * dense(b, d, d) + 2 * dense(b * k, 1, d)
        out["no_input_grad"] = out.get("no_input_grad", 0.0) + dense(b * k, p, d) + dense(b * k, t, d)
        out["forward_only"] = out.get("forward_only", 0.0) + dense(b, p, r)
        return out
