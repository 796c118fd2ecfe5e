"""A decoder-only language model: the `TextDecoder` stack without cross-attention, with the KV-cached decoding seam
(`init_cache` / `decode_step`) the decoding library drives."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlm_jax.models.decoder import TextDecoder, empty_cache

Array = jax.Array


class LanguageModel(nn.Module):
    """Causal self-attention over right-padded tokens → next-token logits."""
    decoder: dict[str, Any]  # TextDecoder fields (cross-attention off)

    def setup(self) -> None:
        self.text_decoder = TextDecoder(**{**self.decoder, "cross_attention": False}, name="decoder")

    def __call__(self, text: Array, *, train: bool = False) -> tuple[Array, dict[str, Any]]:
        """Decoder inputs [B, L] → (logits float32 [B, L, V], aux)."""
        return self.text_decoder(text, train=train)

    def decode_step(self, tokens: Array) -> Array:
        """One cached step: tokens [N, 1] → logits [N, 1, V]."""
        return self.text_decoder(tokens, decode=True)[0]

    def create_cache(self, tokens: Array) -> None:
        """Creates the decoding cache at its full length (used through `init_cache`)."""
        self.text_decoder(tokens, decode=True)

    def init_cache(self, batch_size: int) -> Any:
        """An empty "cache" collection for `batch_size` rows."""
        tokens = jnp.zeros((batch_size, int(self.decoder.get("max_len", 64))), jnp.int32)
        return empty_cache(self, tokens, method="create_cache")
