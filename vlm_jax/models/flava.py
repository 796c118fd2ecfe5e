"""FLAVA-style model (Singh et al. 2022): image and text encoders, a fusion encoder over both, and the heads of
the contrastive, masked image (MAE pixels), masked language, masked multimodal and image–text matching losses."""
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


class FusionEncoder(nn.Module):
    """Text states (projected to `width`) through blocks of bidirectional self-attention (pads hidden), cross-attention
    to the image tokens and an MLP (ALBEF's multimodal encoder); returns (states [B, L, W], masked mean [B, W])."""
    width: int = 128
    depth: int = 2
    mlp_dim: int = 512
    num_heads: int = 4
    dtype_mm: str = "float32"

    @nn.compact
    def __call__(self, text: Array, valid: Array, image: Array, *, train: bool = False) -> tuple[Array, Array]:
        x = layers.dense(self.width, ("embed", None), self.dtype_mm, name="text_in")(text).astype(jnp.float32)
        mask = valid[:, None, None, :]
        for i in range(self.depth):
            x, _ = DecoderBlock(self.mlp_dim, self.num_heads, cross_attention=True, dtype_mm=self.dtype_mm,
                                name=f"block_{i:02d}")(x, image, mask, None, not train)
        x = layers.layer_norm("norm")(x)
        w = valid.astype(jnp.float32)[..., None]
        return x, jnp.sum(x * w, axis=1) / jnp.maximum(jnp.sum(w, axis=1), 1.0)


class FLAVA(nn.Module):
    """Image tower "img" (the two-tower model's, so CLIP or MAE weights start it), bidirectional text tower "txt",
    "fusion" encoder, heads: "itm_head" (match / no match), "mlm_head" (text tower), "mmm_head" (fusion states),
    "mim_decoder" (MAE pixels), and the contrastive temperature "t" (and bias "b")."""
    image: dict[str, Any]
    text: dict[str, Any]  # TextTransformer fields, vocab_size included (the MLM vocabulary, MASK among it)
    fusion: dict[str, Any]
    decoder: dict[str, Any]  # the MAE decoder
    embed_dim: int
    image_size: int
    temperature_init: float = 10.0
    bias_init: float | None = None

    def setup(self):
        self.img = ViT(**{"num_classes": self.embed_dim, **self.image})
        self.txt = TextTransformer(**{"num_classes": self.embed_dim, **self.text})
        fusion = fusion_fields(self.fusion)
        self.fuser = FusionEncoder(**fusion)
        dt, vocab = fusion["dtype_mm"], int(self.text["vocab_size"])
        self.itm_head = layers.dense(2, ("embed", None), dt)
        self.mlm_head = layers.dense(vocab, ("embed", "vocab"), self.text.get("dtype_mm", "float32"))
        self.mmm_head = layers.dense(vocab, ("embed", "vocab"), dt)
        patch, grid = vit_grid({**self.image, "pool_type": "none", "num_classes": None}, (self.image_size,) * 2)
        self.num_patches = grid[0] * grid[1]
        self.mim_decoder = MAEDecoder(self.decoder, grid, patch)
        self.t_and_b = temperature_and_bias(self, self.temperature_init, self.bias_init)

    def encode_image(self, image: Array, keep: Array | None = None, train: bool = False) -> dict[str, Array]:
        """{"z": unit embedding, "tokens": encoder output tokens, "pooled": pre-projection features}."""
        out, aux = self.img(image, train=train, keep=keep)
        return {"z": l2_normalize(out), "tokens": aux["encoded"], "pooled": aux["pre_logits"]}

    def encode_text(self, tokens: Array, train: bool = False) -> dict[str, Array]:
        """{"z": unit embedding, "states": encoder output per token, "valid": non-pad positions}."""
        out, aux = self.txt(tokens, train=train)
        return {"z": l2_normalize(out), "states": aux["encoded"], "valid": tokens != self.text.get("pad_id", 0)}

    def fuse(self, states: Array, valid: Array, image_tokens: Array, train: bool = False) -> tuple[Array, Array]:
        """Fusion encoder states and pooled vector of text `states` attending to `image_tokens`."""
        return self.fuser(states, valid, image_tokens, train=train)

    def itm_logits(self, pooled: Array) -> Array:
        """[B, 2] no-match / match logits of fused pooled vectors."""
        return self.itm_head(pooled).astype(jnp.float32)

    def mlm_logits(self, states: Array) -> Array:
        """Vocabulary logits of text-tower states (masked language modelling)."""
        return self.mlm_head(states).astype(jnp.float32)

    def mmm_logits(self, states: Array) -> Array:
        """Vocabulary logits of fused states (masked multimodal modelling)."""
        return self.mmm_head(states).astype(jnp.float32)

    def mim_pixels(self, tokens: Array, keep: Array, train: bool = False) -> Array:
        """Pixels of every patch from the visible tokens at `keep` (MAE)."""
        return self.mim_decoder(tokens, keep, train=train)

    def temperature(self) -> dict[str, Array]:
        """{"t": exp(log t)} and, with a bias, {"b"}."""
        return {k: v for k, v in self.t_and_b.items() if k in ("t", "b")}

    def __call__(self, image: Array | None, text: Array | None, *,
                 train: bool = False) -> tuple[tuple[Array | None, Array | None], dict[str, Any]]:
        """Contrastive embeddings; at init every head runs once so that all parameters exist."""
        zimg, ztxt, aux = embed_pair(self, image, text, train)
        if self.is_initializing() and image is not None and text is not None:
            im, tx = self.encode_image(image, train=train), self.encode_text(text, train=train)
            states, pooled = self.fuse(tx["states"], tx["valid"], im["tokens"], train)
            self.itm_logits(pooled), self.mlm_logits(tx["states"]), self.mmm_logits(states)
            keep = jnp.broadcast_to(jnp.arange(self.num_patches, dtype=jnp.int32), (image.shape[0], self.num_patches))
            self.mim_pixels(im["tokens"], keep, train)
        return (zimg, ztxt), aux
