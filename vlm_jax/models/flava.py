"""FLAVA-style model (Singh et al. 2022): image and text encoders, FLAVA's multimodal encoder over both (self-
attention over [CLS_M] + projected image states + projected text states), and the heads of the contrastive, masked
image (MAE pixels), masked language, masked multimodal (text tokens and patch pixels) and image–text matching
losses."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlm_jax.models import layers
from vlm_jax.models.decoder import DecoderBlock
from vlm_jax.models.mae import MAEDecoder, vit_grid
from vlm_jax.models.text import TextTransformer
from vlm_jax.models.two_tower import embed_pair, l2_normalize, temperature_and_bias
from vlm_jax.models.vit import ViT

Array = jax.Array


def fusion_fields(fusion: dict[str, Any]) -> dict[str, Any]:
    """The fusion encoder's width, depth, mlp_dim, num_heads and dtype_mm, defaults filled in."""
    return {"width": 128, "depth": 2, "mlp_dim": 512, "num_heads": 4, "dtype_mm": "float32", **fusion}


class MultimodalEncoder(nn.Module):
    """FLAVA's multimodal encoder: image and text states, each through its own linear map to `width`, concatenated
    after a learned [CLS_M] token and passed through `depth` pre-LN self-attention blocks (text pads hidden as keys).
    Returns ([CLS_M] output [B, W], {"image": outputs at the image positions, "text": at the text positions})."""
    width: int = 128
    depth: int = 2
    mlp_dim: int = 512
    num_heads: int = 4
    dtype_mm: str = "float32"

    @nn.compact
    def __call__(self, image: Array, text: Array, valid: Array, *,
                 train: bool = False) -> tuple[Array, dict[str, Array]]:
        img = layers.dense(self.width, ("embed", None), self.dtype_mm, name="image_in")(image).astype(jnp.float32)
        txt = layers.dense(self.width, ("embed", None), self.dtype_mm, name="text_in")(text).astype(jnp.float32)
        b, n = img.shape[:2]
        cls = self.param("cls", nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, None, "embed")),
                         (1, 1, self.width), jnp.float32)
        x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, self.width)), img, txt], axis=1)
        keys = jnp.concatenate([jnp.ones((b, 1 + n), bool), valid], axis=1)
        for i in range(self.depth):
            x, _ = DecoderBlock(self.mlp_dim, self.num_heads, cross_attention=False, dtype_mm=self.dtype_mm,
                                name=f"block_{i:02d}")(x, None, keys[:, None, None, :], None, not train)
        x = layers.layer_norm("norm")(x)
        return x[:, 0], {"image": x[:, 1:1 + n], "text": x[:, 1 + n:]}


class FLAVA(nn.Module):
    """Image tower "img" (the two-tower model's, so CLIP or MAE weights start it; with `mask_token` it can hide
    patches), bidirectional text tower "txt", multimodal encoder "fuser", heads: "itm_head" (match / no match, on
    [CLS_M]), "mlm_head" (text tower), "mmm_head" (multimodal text states → tokens), "mmm_pixel_head" (multimodal
    patch states → pixels: FLAVA predicts dVAE tokens, we have no dVAE), "mim_decoder" (MAE pixels), and the
    contrastive temperature "t" (and bias "b")."""
    image: dict[str, Any]
    text: dict[str, Any]  # TextTransformer fields, vocab_size included (the MLM vocabulary, MASK among it)
    fusion: dict[str, Any]
    decoder: dict[str, Any]  # the MAE decoder
    embed_dim: int
    image_size: int
    temperature_init: float = 10.0
    bias_init: float | None = None
    channels: int = 3

    def setup(self):
        self.img = ViT(**{"num_classes": self.embed_dim, **self.image})
        self.txt = TextTransformer(**{"num_classes": self.embed_dim, **self.text})
        fusion = fusion_fields(self.fusion)
        self.fuser = MultimodalEncoder(**fusion)
        dt, vocab = fusion["dtype_mm"], int(self.text["vocab_size"])
        self.itm_head = layers.dense(2, ("embed", None), dt)
        self.mlm_head = layers.dense(vocab, ("embed", "vocab"), self.text.get("dtype_mm", "float32"))
        self.mmm_head = layers.dense(vocab, ("embed", "vocab"), dt)
        patch, grid = vit_grid({**self.image, "pool_type": "none", "num_classes": None}, (self.image_size,) * 2)
        self.num_patches = grid[0] * grid[1]
        self.mmm_pixel_head = layers.dense(patch[0] * patch[1] * self.channels, ("embed", None), dt)
        self.mim_decoder = MAEDecoder(self.decoder, grid, patch, self.channels)
        self.t_and_b = temperature_and_bias(self, self.temperature_init, self.bias_init)

    def encode_image(self, image: Array, keep: Array | None = None, patch_mask: Array | None = None,
                     train: bool = False) -> dict[str, Array]:
        """{"z": unit embedding, "tokens": encoder output tokens, "pooled": pre-projection features}; `keep`: only
        these patches (MAE), `patch_mask` [B, N]: these patches replaced by the mask token (MMM)."""
        out, aux = self.img(image, train=train, keep=keep, patch_mask=patch_mask)
        return {"z": l2_normalize(out), "tokens": aux["encoded"], "pooled": aux["pre_logits"]}

    def encode_text(self, tokens: Array, train: bool = False) -> dict[str, Array]:
        """{"z": unit embedding, "states": encoder output per token, "valid": non-pad positions}."""
        out, aux = self.txt(tokens, train=train)
        return {"z": l2_normalize(out), "states": aux["encoded"], "valid": tokens != self.text.get("pad_id", 0)}

    def fuse(self, image_tokens: Array, states: Array, valid: Array,
             train: bool = False) -> tuple[Array, dict[str, Array]]:
        """([CLS_M] output, {"image", "text"} states) of the multimodal encoder over image tokens and text states."""
        return self.fuser(image_tokens, states, valid, train=train)

    def itm_logits(self, pooled: Array) -> Array:
        """[B, 2] no-match / match logits of [CLS_M] outputs."""
        return self.itm_head(pooled).astype(jnp.float32)

    def mlm_logits(self, states: Array) -> Array:
        """Vocabulary logits of text-tower states (masked language modelling)."""
        return self.mlm_head(states).astype(jnp.float32)

    def mmm_logits(self, states: Array) -> Array:
        """Vocabulary logits of multimodal text states (masked multimodal modelling)."""
        return self.mmm_head(states).astype(jnp.float32)

    def mmm_pixels(self, states: Array) -> Array:
        """Pixels [B, N, ph·pw·C] of every patch from the multimodal image states (a leading [CLS_I] is skipped)."""
        return self.mmm_pixel_head(states[:, -self.num_patches:]).astype(jnp.float32)

    def mim_pixels(self, tokens: Array, keep: Array, train: bool = False) -> Array:
        """Pixels of every patch from the visible tokens at `keep` (MAE; a leading [CLS_I] is skipped)."""
        return self.mim_decoder(tokens[:, -keep.shape[1]:], keep, train=train)

    def temperature(self) -> dict[str, Array]:
        """{"t": exp(log t)} and, with a bias, {"b"}."""
        return {k: v for k, v in self.t_and_b.items() if k in ("t", "b")}

    def __call__(self, image: Array | None, text: Array | None, *,
                 train: bool = False) -> tuple[tuple[Array | None, Array | None], dict[str, Any]]:
        """Contrastive embeddings; at init every head runs once so that all parameters exist."""
        zimg, ztxt, aux = embed_pair(self, image, text, train)
        if self.is_initializing() and image is not None and text is not None:
            im, tx = self.encode_image(image, train=train), self.encode_text(text, train=train)
            pooled, fused = self.fuse(im["tokens"], tx["states"], tx["valid"], train)
            self.itm_logits(pooled), self.mlm_logits(tx["states"]), self.mmm_logits(fused["text"])
            self.mmm_pixels(fused["image"])
            keep = jnp.broadcast_to(jnp.arange(self.num_patches, dtype=jnp.int32), (image.shape[0], self.num_patches))
            self.mim_pixels(im["tokens"], keep, train)
        return (zimg, ztxt), aux
