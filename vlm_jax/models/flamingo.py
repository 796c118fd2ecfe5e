"""Flamingo (Alayrac et al. 2022) on the project's frozen language model: a Perceiver resampler turns the ViT's
tokens into a fixed number of visual latents, and gated cross-attention layers (tanh gates at 0) before every
`gated_every`-th block of the frozen LM read them. The LM's parameters keep `LanguageModel`'s paths
(`decoder/block_NN/…`); the new layers sit at `decoder/block_NN/gated_xattn/…`, so `init_from` loads the LM and
`optim.freeze='^decoder/(?!.*gated_xattn)'` freezes all of it but them."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlm_jax.models import layers
from vlm_jax.models.decoder import TextDecoder, TextGenerator
from vlm_jax.models.prefix_lm import ImagePrefixLM
from vlm_jax.models.vit import ViT

Array = jax.Array

RESAMPLER_DEFAULTS = dict(num_latents=8, depth=2, num_heads=4, mlp_dim=0)
# num_latents: visual tokens per image whatever the ViT's token count; depth / num_heads / mlp_dim (0: 4·width)


class PerceiverResampler(nn.Module):
    """Learned latents [n, D] that attend to the media tokens and to themselves, `depth` times: [B, T, D] →
    [B, n, D] for any T. No positions enter, so the output does not depend on the tokens' order."""
    num_latents: int = 8
    depth: int = 2
    num_heads: int = 4
    mlp_dim: int = 0
    dtype_mm: str = "float32"

    @nn.compact
    def __call__(self, x: Array) -> Array:
        b, _, d = x.shape
        latents = self.param("latents", nn.initializers.normal(0.02), (self.num_latents, d), jnp.float32)
        lat = jnp.broadcast_to(latents, (b, self.num_latents, d))
        x = x.astype(jnp.float32)
        for i in range(self.depth):
            q = layers.layer_norm(f"ln_latents_{i}")(lat)
            kv = jnp.concatenate([layers.layer_norm(f"ln_media_{i}")(x), q], axis=1)
            lat = lat + layers.Attention(self.num_heads, dtype_mm=self.dtype_mm, name=f"attn_{i}")(q, kv)
            lat = lat + layers.MlpBlock(self.mlp_dim or 4 * d, dtype_mm=self.dtype_mm, name=f"mlp_{i}")(
                layers.layer_norm(f"ln_mlp_{i}")(lat))
        return layers.layer_norm("ln_out")(lat)


class Flamingo(TextGenerator):
    """ViT → Perceiver resampler → latents cross-attended by gated layers inside the frozen LM."""
    image: dict[str, Any]
    decoder: dict[str, Any]  # the LM's TextDecoder fields
    resampler: dict[str, Any] | None = None
    gated_every: int = 1
    text_len: int = 0  # generated tokens at most (0: the LM's max_len)

    def setup(self) -> None:
        self.vit = ViT(**{**self.image, "pool_type": "none", "num_classes": None}, name="img")
        self.perceiver = PerceiverResampler(**{**RESAMPLER_DEFAULTS, **dict(self.resampler or {})},
                                            dtype_mm=self.decoder.get("dtype_mm", "float32"), name="resampler")
        self.text_decoder = TextDecoder(**{**self.decoder, "cross_attention": False, "gated_every": self.gated_every},
                                        name="decoder")

    def media_tokens(self, image: Array, train: bool = False) -> Array:
        """What the gated layers read of each image [N, H, W, C]: the resampler's latents [N, n, D]."""
        return self.perceiver(self.vit(image, train=train)[0])

    def encode(self, image: Array | dict[str, Array], prompt: Array | None = None,
               train: bool = False) -> tuple[dict[str, Array | None], None]:
        """The decoding context {"latents": [B, n, D], "prompt": task prompt tokens [B, P] or None}."""
        return {"latents": self.media_tokens(image, train), "prompt": prompt}, None

    def _prompt_prefix(self, context: dict[str, Any]) -> Array | None:
        """With a prompt, an empty embedded prefix [B, 0, width]: the decoder then hides the prompt's pads from
        later positions, teacher-forced and when prefilling the cache (`TextDecoder`'s prefix seam)."""
        prompt = context.get("prompt")
        if prompt is None:
            return None
        return jnp.zeros((prompt.shape[0], 0, int(self.decoder.get("width", 512))), jnp.float32)

    def interleaved_logits(self, images: Array, tokens: Array, media: Array, train: bool = False) -> Array:
        """Teacher-forced logits [B, L, V] of an interleaved sequence: images [B, M, H, W, C], decoder inputs
        [B, L], media [B, L] the image each position sees (Flamingo: the latest image before the token it
        predicts). A position's gated layers read that image's latents only; earlier images reach it through the
        LM's self-attention over the text they conditioned."""
        b, m = images.shape[:2]
        latents = self.media_tokens(images.reshape(b * m, *images.shape[2:]), train)
        n = latents.shape[1]
        latents = latents.reshape(b, m * n, latents.shape[-1])
        sees = media[:, :, None] == (jnp.arange(m * n) // n)[None, None, :]  # [B, L, M·n]
        return self.text_decoder(tokens, latents, train=train, context_mask=sees)[0]

    def logits(self, tokens: Array, context: dict[str, Any], train: bool = False) -> Array:
        """Teacher-forced logits [B, L, V] of decoder inputs, the LM's gated layers reading the latents; a task
        prompt comes first and is read bidirectionally (as `ImagePrefixLM`'s), its pads hidden."""
        text, plen, p = ImagePrefixLM.with_prompt(tokens, context, None)
        return self.text_decoder(text, context["latents"], train=train, prefix=self._prompt_prefix(context),
                                 prefix_len=plen)[0][:, p:]

    def decoder_inputs(self, context: dict[str, Any]) -> dict[str, Any]:
        """Decoding: the gated layers' keys/values of the latents go into the context cache at prefill, after
        the prompt (if any) has been written to the self-attention cache."""
        if context.get("prompt") is None:
            return {"context": context["latents"]}
        return {"context": context["latents"], "prompt": context["prompt"], "prefix": self._prompt_prefix(context)}

    def decode_capacity(self, prompt_len: int = 0) -> int:
        """The answer length the data allows, within the LM's position table after the prompt."""
        max_len = int(self.decoder.get("max_len", 64))
        return min(self.text_len or max_len, max_len - prompt_len)

    def __call__(self, image: Array, text: Array, media: Array | None = None, *, train: bool = False,
                 prompt: Array | None = None) -> tuple[tuple[None, None, Array], dict[str, Any]]:
        """image [B, H, W, C], decoder inputs `text` [B, L] (after an optional task prompt [B, P]) → ((None, None,
        logits [B, L, V]), aux); with `media` [B, L], an interleaved sequence of images [B, M, H, W, C]
        (`interleaved_logits`, no prompt)."""
        if media is not None:
            if prompt is not None:
                raise ValueError("interleaved sequences take no task prompt")
            return (None, None, self.interleaved_logits(image, text, media, train)), {}
        context, _ = self.encode(image, prompt, train)
        return (None, None, self.logits(text, context, train)), {"context": context}


class VisualGPT(Flamingo):
    """VisualGPT (Chen et al. 2022) on the frozen LM: every LM block fuses its language state with cross-attention
    to all of the ViT's tokens through the self-resurrecting activation unit (`decoder.SelfResurrectingFusion`,
    at `decoder/block_NN/srau/…`). No resampler."""
    srau_threshold: float = 0.2

    def setup(self) -> None:
        self.vit = ViT(**{**self.image, "pool_type": "none", "num_classes": None}, name="img")
        self.text_decoder = TextDecoder(**{**self.decoder, "cross_attention": False,
                                           "srau_threshold": self.srau_threshold}, name="decoder")

    def media_tokens(self, image: Array, train: bool = False) -> Array:
        """All of the ViT's tokens [N, T, D] (kept under the decoding seam's name "latents")."""
        return self.vit(image, train=train)[0]
