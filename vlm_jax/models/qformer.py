"""BLIP-2's Querying Transformer (Li et al. 2023): learned queries and text tokens in one transformer whose
self-attention they share; the queries alone cross-attend to the (frozen) image features, every `cross_every`-th
block; queries and text have their own MLPs. What each position may see is the stage-1 task's mask
(`qformer_mask`):

  itc  unimodal: queries see queries, text sees text (the image–text contrastive pass)
  itm  bidirectional: every position sees every valid position (image–text matching)
  itg  multimodal causal: queries see queries only; text sees every query and the text up to itself (generation)

Pad keys are hidden in every mask. Stage 2 feeds the queries' outputs (image only) to the frozen LM as a prefix.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlm_jax.models import layers
from vlm_jax.models.decoder import CrossAttention
from vlm_jax.models.two_tower import l2_normalize

Array = jax.Array
_lp = nn.with_logical_partitioning
MASKS = ("itc", "itm", "itg")
DATA_DECIDED = ("vocab_size", "max_len", "pad_id")  # QFormer fields the data's tokenizer and text length fill


def qformer_mask(kind: str, num_queries: int, text_valid: Array) -> Array:
    """bool [B, 1, Q + L, Q + L] (query rows, key columns) of stage-1 task `kind` for text validity [B, L]."""
    if kind not in MASKS:
        raise ValueError(f"Q-Former mask must be one of {MASKS}, got {kind!r}")
    b, length = text_valid.shape
    q, n = num_queries, num_queries + length
    is_query = jnp.arange(n) < q
    keys = jnp.concatenate([jnp.ones((b, q), bool), text_valid.astype(bool)], axis=1)  # [B, N] valid keys
    same_kind = is_query[:, None] == is_query[None, :]
    if kind == "itc":
        allowed = same_kind
    elif kind == "itm":
        allowed = jnp.ones((n, n), bool)
    else:  # itg: query rows see queries; text rows see queries and earlier-or-same text
        causal = jnp.arange(n)[:, None] >= jnp.arange(n)[None, :]
        allowed = jnp.where(is_query[:, None], is_query[None, :], is_query[None, :] | causal)
    return (allowed[None] & keys[:, None, :])[:, None]


class QFormerBlock(nn.Module):
    """Shared self-attention; cross-attention of the query positions to the image (if `cross`); separate MLPs."""
    num_queries: int
    mlp_dim: int
    num_heads: int
    cross: bool
    dtype_mm: str = "float32"

    @nn.compact
    def __call__(self, x: Array, image: Array | None, mask: Array) -> Array:
        q = self.num_queries
        x = x + layers.Attention(self.num_heads, dtype_mm=self.dtype_mm, name="self_attn")(
            layers.layer_norm("ln_self")(x), mask=mask)
        queries, text = x[:, :q], x[:, q:]
        if self.cross and q:
            queries = queries + CrossAttention(self.num_heads, self.dtype_mm, name="cross_attn")(
                layers.layer_norm("ln_cross")(queries), image)
        if q:
            queries = queries + layers.MlpBlock(self.mlp_dim, dtype_mm=self.dtype_mm, name="query_mlp")(
                layers.layer_norm("ln_query_mlp")(queries))
        text = text + layers.MlpBlock(self.mlp_dim, dtype_mm=self.dtype_mm, name="text_mlp")(
            layers.layer_norm("ln_text_mlp")(text))
        return jnp.concatenate([queries, text], axis=1)


class QFormer(nn.Module):
    """Queries [Q, W] + embedded text → `depth` QFormerBlocks → (query outputs [B, Q, W], text outputs [B, L, W])."""
    vocab_size: int
    num_queries: int = 8
    width: int = 128
    depth: int = 2
    mlp_dim: int = 512
    num_heads: int = 4
    max_len: int = 32
    cross_every: int = 2  # BLIP-2 inserts cross-attention every other block
    pad_id: int = 0
    dtype_mm: str = "float32"

    @nn.compact
    def __call__(self, image: Array | None, text: Array | None, kind: str = "itm") -> tuple[Array, Array]:
        """image features [B, T, D] (None: no queries — text alone), text ids [B, L] (None: queries alone)."""
        b = (image if image is not None else text).shape[0]
        queries = self.param("queries", _lp(nn.initializers.normal(0.02), (None, "embed")),
                             (self.num_queries, self.width), jnp.float32)
        embed = nn.Embed(self.vocab_size, self.width, name="embedding",
                         embedding_init=_lp(nn.initializers.normal(stddev=0.02), ("vocab", "embed")))
        q = self.num_queries if image is not None else 0
        parts, valid = [], jnp.zeros((b, 0), bool)
        if q:
            parts.append(jnp.broadcast_to(queries, (b, q, self.width)))
        if text is not None:
            if text.shape[1] > self.max_len:
                raise ValueError(f"text length {text.shape[1]} exceeds max_len {self.max_len}")
            pe = layers.posemb_learned(self, "pos_embedding", self.max_len, self.width)  # (a text-less use has none)
            parts.append(embed(text) + pe[:, :text.shape[1]])
            valid = text != self.pad_id
        x = layers.layer_norm("ln_embed")(jnp.concatenate(parts, axis=1))
        mask = qformer_mask(kind, q, valid)
        for i in range(self.depth):
            x = QFormerBlock(q, self.mlp_dim, self.num_heads, cross=i % self.cross_every == 0,
                             dtype_mm=self.dtype_mm, name=f"block_{i:02d}")(x, image, mask)
        x = layers.layer_norm("ln_out")(x)
        return x[:, :q], x[:, q:]


def qformer_fields(section: dict[str, Any]) -> dict[str, Any]:
    """`model.qformer` with its defaults (the data fills vocab_size, max_len and pad_id)."""
    return {**dict(num_queries=8, width=128, depth=2, mlp_dim=512, num_heads=4, cross_every=2), **section}


class QFormerStage1(nn.Module):
    """BLIP-2's first stage: image features (a ViT) and the Q-Former with its three task heads — contrastive
    projections of the queries and of the text's first ([CLS]) position, a 2-way matching head on the queries
    (mean over queries), and a vocabulary head on the text positions for generation."""
    image: dict[str, Any]
    qformer: dict[str, Any]  # QFormer fields (vocab_size, max_len, pad_id filled by the objective)
    embed_dim: int = 64
    temperature_init: float = 1 / 0.07
    cls_id: int = 0  # the [CLS] token leading the contrastive and matching passes' text
    bos_id: int = 0  # the [DEC] token leading the generation pass's decoder inputs

    def cls_text(self, text: Array) -> Array:
        """[CLS] + caption tokens [B, L + 1] (the contrastive and matching passes)."""
        return jnp.concatenate([jnp.full(text.shape[:1] + (1,), self.cls_id, text.dtype), text], axis=1)

    def dec_text(self, text: Array) -> Array:
        """Decoder inputs [B, L]: [DEC] + the caption shifted right (the generation pass; targets: the caption)."""
        return jnp.concatenate([jnp.full(text.shape[:1] + (1,), self.bos_id, text.dtype), text[:, :-1]], axis=1)

    def setup(self) -> None:
        from vlm_jax.models.vit import ViT

        self.vit = ViT(**{**self.image, "pool_type": "none", "num_classes": None}, name="img")
        self.qformer_module = QFormer(**self.qformer, name="qformer")
        dense = lambda n, name: layers.dense(n, ("embed", None), self.qformer.get("dtype_mm", "float32"),  # noqa
                                             name=name)
        self.img_proj, self.txt_proj = dense(self.embed_dim, "itc_img_proj"), dense(self.embed_dim, "itc_txt_proj")
        self.itm_head = dense(2, "itm_head")
        self.lm_head = layers.dense(self.qformer["vocab_size"], ("embed", "vocab"),
                                    self.qformer.get("dtype_mm", "float32"), out_dtype="float32", name="itg_head")
        self.log_t = self.param("t", nn.initializers.constant(jnp.log(self.temperature_init)), (), jnp.float32)

    def features(self, image: Array, train: bool = False) -> Array:
        """The image encoder's tokens [B, T, D] (frozen in BLIP-2: freeze `img/` with a pretrained tower)."""
        return self.vit(image, train=train)[0]

    def itc(self, feats: Array, cls_text: Array) -> tuple[Array, Array, Array]:
        """(unit query embeddings [B, Q, E], unit text embeddings [B, E], t) from the unimodal pass."""
        queries, text = self.qformer_module(feats, cls_text, "itc")
        zq, zt = self.img_proj(queries).astype(jnp.float32), self.txt_proj(text[:, 0]).astype(jnp.float32)
        return l2_normalize(zq), l2_normalize(zt), jnp.exp(self.log_t)

    def image_queries(self, image: Array) -> Array:
        """Unit query embeddings [B, Q, E] of images alone (the evaluators' image side)."""
        queries, _ = self.qformer_module(self.features(image), None, "itc")
        return l2_normalize(self.img_proj(queries).astype(jnp.float32))

    def text_embedding(self, cls_text: Array) -> Array:
        """Unit text embeddings [B, E] of [CLS]-led text alone (the evaluators' text side)."""
        _, text = self.qformer_module(None, cls_text, "itc")
        return l2_normalize(self.txt_proj(text[:, 0]).astype(jnp.float32))

    def itm(self, feats: Array, cls_text: Array) -> Array:
        """Match logits [B, 2] (0: not a pair, 1: a pair) from the bidirectional pass."""
        queries, _ = self.qformer_module(feats, cls_text, "itm")
        return jnp.mean(self.itm_head(queries).astype(jnp.float32), axis=1)

    def itg(self, feats: Array, dec_text: Array) -> Array:
        """Next-token logits [B, L, V] of decoder inputs from the multimodal causal pass."""
        _, text = self.qformer_module(feats, dec_text, "itg")
        return self.lm_head(text).astype(jnp.float32)

    def __call__(self, image: Array, text: Array, *,
                 train: bool = False) -> tuple[tuple[Array, Array, Array], dict[str, Any]]:
        """All three heads on matched pairs of images and caption tokens [B, L] (creates every parameter):
        ((zq, zt, itg logits), {"t", "itm"})."""
        feats = self.features(image, train)
        zq, zt, t = self.itc(feats, self.cls_text(text))
        return (zq, zt, self.itg(feats, self.dec_text(text))), {"t": t, "itm": self.itm(feats, self.cls_text(text))}
