"""Vision prefixes for a frozen decoder-only language model (Frozen, Tsimpoukelli et al. 2021; ClipCap, Mokady et
al. 2021; the LLaVA / MiniGPT-4 projection): the image becomes embeddings in the LM's input space, placed before the
caption in the LM's own stack. Only the image side and the mapper train; the LM (`decoder/…`) is loaded from a
language-model run and frozen by the config (`init_from` + `optim.freeze`).

Mappers (`mapper.kind`), from the ViT's tokens [B, T, D] and their mean (the pooled image) [B, D]:
  linear       pooled → `prefix_len` embeddings by one linear map (Frozen: 2 embeddings)
  mlp          pooled → hidden (tanh) → `prefix_len` embeddings (ClipCap's MLP mapper)
  transformer  pooled → `prefix_len` embeddings by a linear map, beside `prefix_len` learned constants, through a
               small transformer; the constants' outputs are the prefix (ClipCap's transformer mapper)
  tokens       every ViT token through a 2-layer GELU MLP into the LM width: T embeddings (LLaVA-1.5's projector;
               MiniGPT-4 uses one linear layer)
  qformer      BLIP-2's second stage: a Q-Former's query outputs (image only) through a linear map (`mapper/qformer/…`
               loads from a stage-1 run's `qformer/…`)
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlm_jax.models import layers
from vlm_jax.models.decoder import TextDecoder
from vlm_jax.models.prefix_lm import ImagePrefixLM
from vlm_jax.models.qformer import QFormer, qformer_fields
from vlm_jax.models.vit import ViT

Array = jax.Array

MAPPERS = ("linear", "mlp", "transformer", "tokens", "qformer")
MAPPER_DEFAULTS = dict(kind="mlp", prefix_len=4, hidden=0, depth=2, num_heads=4, mlp_dim=0, qformer={})
# prefix_len: embeddings the pooled mappers make (the tokens mapper makes one per ViT token, the Q-Former one per
# query); hidden: the MLP mapper's hidden width (0: ClipCap's (D + prefix_len·width) / 2); depth / num_heads /
# mlp_dim (0: 4·width): the transformer mapper's blocks; qformer: the Q-Former's fields (models/qformer.py)
KIND_KEYS = {"linear": ("prefix_len",), "mlp": ("prefix_len", "hidden"),
             "transformer": ("prefix_len", "depth", "num_heads", "mlp_dim"), "tokens": (), "qformer": ("qformer",)}


class PrefixMapper(nn.Module):
    """ViT tokens [B, T, D] → prefix embeddings [B, P, width] in the LM's input space."""
    kind: str
    width: int
    prefix_len: int = 4
    hidden: int = 0
    depth: int = 2
    num_heads: int = 4
    mlp_dim: int = 0
    qformer: dict[str, Any] | None = None
    dtype_mm: str = "float32"

    @nn.compact
    def __call__(self, tokens: Array, *, train: bool = False) -> Array:
        if self.kind not in MAPPERS:
            raise ValueError(f"model.mapper.kind must be one of {MAPPERS}, got {self.kind!r}")
        b, _, d = tokens.shape
        tokens = tokens.astype(jnp.float32)
        dense = lambda n, name: layers.dense(n, (None, None), self.dtype_mm, name=name)  # noqa: E731
        if self.kind == "tokens":
            return dense(self.width, "proj_1")(nn.gelu(dense(self.width, "proj_0")(tokens)))
        if self.kind == "qformer":  # no text: only the queries run (vocabulary and positions are never created)
            fields = {**qformer_fields(dict(self.qformer or {})), "vocab_size": 1, "max_len": 1,
                      "dtype_mm": self.dtype_mm}
            queries, _ = QFormer(**fields, name="qformer")(tokens, None)
            return dense(self.width, "proj")(queries)
        pooled = jnp.mean(tokens, axis=1)
        p, w = self.prefix_len, self.width
        if self.kind == "linear":
            return dense(p * w, "proj")(pooled).reshape(b, p, w)
        if self.kind == "mlp":
            hidden = self.hidden or (d + p * w) // 2
            return dense(p * w, "proj_1")(jnp.tanh(dense(hidden, "proj_0")(pooled))).reshape(b, p, w)
        x = dense(p * w, "proj")(pooled).reshape(b, p, w)
        const = self.param("constants", nn.initializers.normal(1.0), (p, w), jnp.float32)
        x = jnp.concatenate([x, jnp.broadcast_to(const, (b, p, w))], axis=1)
        x, _ = layers.Encoder(depth=self.depth, mlp_dim=self.mlp_dim or 4 * w, num_heads=self.num_heads,
                              dtype_mm=self.dtype_mm, name="transformer")(x, train=train)
        return x[:, p:]


class VisionPrefixLM(ImagePrefixLM):
    """ViT → `PrefixMapper` → the prefix of a decoder-only LM (`decoder`, named as `LanguageModel`'s, so a
    language-model run's parameters load at the same paths). Decoding and the prompt seam are `ImagePrefixLM`'s."""
    mapper: dict[str, Any] | None = None
    text_len: int = 0  # generated tokens at most (0: the LM's max_len)

    def setup(self) -> None:
        self.vit = ViT(**{**self.image, "pool_type": "none", "num_classes": None}, name="img")
        self.text_decoder = TextDecoder(**{**self.decoder, "cross_attention": False}, name="decoder")
        self.prefix_mapper = PrefixMapper(**{**MAPPER_DEFAULTS, **dict(self.mapper or {})},
                                          width=int(self.decoder.get("width", 512)),
                                          dtype_mm=self.decoder.get("dtype_mm", "float32"), name="mapper")

    def encode(self, image: Array | dict[str, Array], prompt: Array | None = None,
               train: bool = False) -> tuple[dict[str, Any], None]:
        """The decoding context {"image": the prefix [B, P, width], "prompt", "image_mask": None}."""
        tokens, _ = self.vit(image, train=train)
        return {"image": self.prefix_mapper(tokens, train=train), "prompt": prompt, "image_mask": None}, None

    def decode_capacity(self, prompt_len: int = 0) -> int:
        """The answer length the data allows, within the LM's position table after the prompt."""
        max_len = int(self.decoder.get("max_len", 64))
        return min(self.text_len or max_len, max_len - prompt_len)
