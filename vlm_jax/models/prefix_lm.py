"""Decoder-only image prefix-LM (SimVLM's PrefixLM, PaliGemma's layout): projected ViT tokens and a text prefix
attend bidirectionally, the rest of the text causally, in one transformer stack (a `TextDecoder` with a prefix).

With a task prompt (PaliGemma's layout: image tokens + prompt bidirectional, answer causal) the prompt joins the
prefix. Decoding prefills the cache with the image tokens and the prompt (all see each other, pads hidden) and
then generates token by token, so the evaluators' `CaptionFns` drive it like the encoder–decoder models (methods
encode / logits and the `TextGenerator` seam: init_cache / prefill / decode_step).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from vlm_jax.models import layers
from vlm_jax.models.decoder import TextDecoder, TextGenerator
from vlm_jax.models.vit import ViT

Array = jax.Array


class ImagePrefixLM(TextGenerator):
    """ViT tokens → linear projection to the decoder width → prefix of a causal text stack."""
    image: dict[str, Any]
    decoder: dict[str, Any]

    def setup(self) -> None:
        self.vit = ViT(**{**self.image, "pool_type": "none", "num_classes": None}, name="img")
        self.text_decoder = TextDecoder(**{**self.decoder, "cross_attention": False}, name="decoder")
        width = self.decoder.get("width", 512)
        self.img_proj = layers.dense(width, ("embed", None), self.decoder.get("dtype_mm", "float32"),
                                     name="img_proj")

    def encode(self, image: Array | dict[str, Array], prompt: Array | None = None,
               train: bool = False) -> tuple[dict[str, Any], None]:
        """The decoding context {"image": the image prefix [B, T, width], "prompt": tokens [B, P] or None,
        "image_mask": the real patches [B, T] of a NaFlex batch, else None} (and no embedding)."""
        tokens, aux = self.vit(image, train=train)
        return {"image": self.img_proj(tokens).astype(jnp.float32), "prompt": prompt,
                "image_mask": aux.get("mask")}, None

    @staticmethod
    def with_prompt(tokens: Array, context: dict[str, Any],
                     prefix_len: Array | None) -> tuple[Array, Array | None, int]:
        """(prompt + tokens, bidirectional text positions, prompt width): a prompt joins the bidirectional prefix
        (its pads hidden); the text after it keeps its own `prefix_len`."""
        prompt = context.get("prompt")
        if prompt is None:
            return tokens, prefix_len, 0
        p = prompt.shape[1]
        plen = jnp.full(tokens.shape[:1], p, jnp.int32) + (0 if prefix_len is None else prefix_len)
        return jnp.concatenate([prompt.astype(tokens.dtype), tokens], axis=1), plen, p

    def logits(self, tokens: Array, context: dict[str, Any], prefix_len: Array | None = None,
               train: bool = False) -> Array:
        """Teacher-forced logits [B, L, V] of decoder inputs after the image prefix and prompt (and `prefix_len`
        text positions also bidirectional)."""
        text, plen, p = self.with_prompt(tokens, context, prefix_len)
        return self.text_decoder(text, train=train, prefix=context["image"], prefix_len=plen,
                                 prefix_mask=context.get("image_mask"))[0][:, p:]

    def decoder_inputs(self, context: dict[str, Any]) -> dict[str, Any]:
        """Decoding prefills the image prefix (NaFlex padding hidden) and the prompt (its pads hidden)."""
        return {"prefix": context["image"], "prompt": context.get("prompt"), "prefix_mask": context.get("image_mask")}

    def decode_capacity(self, prompt_len: int = 0) -> int:
        """The prompt shares the decoder's `max_len` text positions with the answer."""
        return int(self.decoder.get("max_len", 64)) - prompt_len

    def __call__(self, image: Array, text: Array, *, train: bool = False, prefix_len: Array | None = None,
                 prompt: Array | None = None) -> tuple[tuple[None, None, Array], dict[str, Any]]:
        """image, decoder inputs `text` [B, L] (after an optional prompt [B, P]) → ((None, None, logits [B, L, V]),
        aux)."""
        context, _ = self.encode(image, prompt, train)
        return (None, None, self.logits(text, context, prefix_len, train)), {"context": context}
