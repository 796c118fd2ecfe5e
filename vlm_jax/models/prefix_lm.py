"""Decoder-only image prefix-LM (SimVLM's PrefixLM, PaliGemma's layout): projected ViT tokens and a text prefix
attend bidirectionally, the rest of the text causally, in one transformer stack (a `TextDecoder` with a prefix).

Decoding prefills the cache with the image tokens (all see each other) and then generates token by token, so the
evaluators' `CaptionFns` drive it like the encoder–decoder `Captioner` (methods encode / logits / prefill /
decode_step / init_cache).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlm_jax.models import layers
from vlm_jax.models.decoder import TextDecoder
from vlm_jax.models.vit import ViT

Array = jax.Array


class ImagePrefixLM(nn.Module):
    """ViT tokens → linear projection to the decoder width → prefix of a causal text stack."""
    image: dict[str, Any]
    decoder: dict[str, Any]

    def setup(self) -> None:
        self.vit = ViT(**{**self.image, "pool_type": "none", "num_classes": None}, name="img")
        self.text_decoder = TextDecoder(**{**self.decoder, "cross_attention": False}, name="decoder")
        width = self.decoder.get("width", 512)
        self.img_proj = layers.dense(width, ("embed", None), self.decoder.get("dtype_mm", "float32"),
                                     name="img_proj")

    def encode(self, image: Array, train: bool = False) -> tuple[Array, None]:
        """The image prefix [B, T, width] (and no embedding)."""
        tokens, _ = self.vit(image, train=train)
        return self.img_proj(tokens).astype(jnp.float32), None

    def logits(self, tokens: Array, context: Array, prefix_len: Array | None = None) -> Array:
        """Teacher-forced logits [B, L, V] of decoder inputs after the image prefix (`prefix_len` text positions
        also bidirectional)."""
        return self.text_decoder(tokens, prefix=context, prefix_len=prefix_len)[0]

    def prefill(self, context: Array) -> None:
        """Writes the image prefix into the decoding cache."""
        self.text_decoder(None, prefix=context, decode=True)

    def create_cache(self, tokens: Array, context: Array) -> None:
        """Creates the decoding cache at its full length (image prefix + text); used through `init_cache`."""
        self.text_decoder(tokens, prefix=context, decode=True)

    def decode_step(self, tokens: Array, context: Array) -> Array:
        """One cached step: tokens [B, 1] → logits [B, 1, V] (the prefix is already in the cache)."""
        del context
        return self.text_decoder(tokens, decode=True)[0]

    def __call__(self, image: Array, text: Array, *, train: bool = False,
                 prefix_len: Array | None = None) -> tuple[tuple[None, None, Array], dict[str, Any]]:
        """image, decoder inputs `text` [B, L] → ((None, None, logits [B, L, V]), aux)."""
        context, _ = self.encode(image, train)
        logits, _ = self.text_decoder(text, train=train, prefix=context, prefix_len=prefix_len)
        return (None, None, logits), {"context": context}

    def init_cache(self, batch_size: int, context: Array) -> Any:
        """An empty cache for the image prefix plus `max_len` text positions."""
        tokens = jnp.zeros((batch_size, self.decoder.get("max_len", 64)), jnp.int32)
        shapes = jax.eval_shape(lambda: self.init(jax.random.key(0), tokens, context, method=ImagePrefixLM.create_cache))
        return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes["cache"])
