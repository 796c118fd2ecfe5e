"""PaLI (Chen et al. 2023): an encoder–decoder over image tokens and a task prompt.

The ViT's patch tokens (no pooling), linearly projected to the encoder width, are concatenated with the embedded
prompt (learned positions); a bidirectional transformer encoder reads both (prompt pads hidden) and an
autoregressive `TextDecoder` generates the answer by cross-attention to the encoder's output. Methods encode /
logits and the `TextGenerator` seam (init_cache / prefill / decode_step) make it drivable by the evaluators'
`CaptionFns` like the other captioners; prefill projects the encoder's output to each cross-attention's
keys/values once per sequence.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlm_jax.models import layers
from vlm_jax.models.decoder import TextDecoder, TextGenerator
from vlm_jax.models.vit import ViT

Array = jax.Array
_lp = nn.with_logical_partitioning


class PaLI(TextGenerator):
    """ViT tokens + prompt → bidirectional encoder → cross-attending decoder."""
    image: dict[str, Any]
    encoder: dict[str, Any]  # width, residual_dtype, and layers.Encoder's fields (depth, mlp_dim, num_heads, scan, …)
    decoder: dict[str, Any]  # TextDecoder fields
    prompt_len: int = 16

    def setup(self) -> None:
        self.vit = ViT(**{**self.image, "pool_type": "none", "num_classes": None}, name="img")
        enc = dict(self.encoder)
        self.width = int(enc.pop("width", 512))
        self.residual_dtype = jnp.dtype(enc.pop("residual_dtype", "float32"))
        dtype_mm = enc.get("dtype_mm", "float32")
        self.img_proj = layers.dense(self.width, ("embed", None), dtype_mm, name="img_proj")
        self.prompt_embedding = nn.Embed(self.decoder["vocab_size"], self.width, name="prompt_embedding",
                                         embedding_init=_lp(nn.initializers.normal(stddev=0.02), ("vocab", "embed")))
        self.prompt_pos = self.param("prompt_pos", _lp(nn.initializers.normal(stddev=0.02), (None, None, "embed")),
                                     (1, self.prompt_len, self.width), jnp.float32)
        enc.setdefault("depth", 6)
        enc.setdefault("mlp_dim", 4 * self.width)
        enc.setdefault("num_heads", 8)
        self.mm_encoder = layers.Encoder(**enc, name="encoder")
        self.text_decoder = TextDecoder(**{**self.decoder, "cross_attention": True}, name="decoder")

    def encode(self, image: Array | dict[str, Array], prompt: Array | None = None,
               train: bool = False) -> tuple[dict[str, Array], None]:
        """The decoder's context {"tokens": encoder output [B, T + P, width], "mask": valid positions [B, T + P]}
        (a NaFlex batch's padding patches and the prompt's pads are not valid: hidden in both stacks)."""
        x, aux = self.vit(image, train=train)
        x = self.img_proj(x).astype(jnp.float32)
        b, t = x.shape[:2]
        valid = jnp.ones((b, t), bool) if aux.get("mask") is None else aux["mask"].astype(bool)
        if prompt is not None:
            if prompt.shape[1] > self.prompt_len:
                raise ValueError(f"prompt length {prompt.shape[1]} exceeds prompt_len {self.prompt_len}")
            p = self.prompt_embedding(prompt) + self.prompt_pos[:, :prompt.shape[1]]
            x = jnp.concatenate([x, p.astype(x.dtype)], axis=1)
            valid = jnp.concatenate([valid, prompt != self.decoder.get("pad_id", 0)], axis=1)
        mask = valid[:, None, None, :]  # bidirectional; pads are hidden keys
        out, _ = self.mm_encoder(x.astype(self.residual_dtype), mask, train=train)
        return {"tokens": out, "mask": valid}, None

    def logits(self, tokens: Array, context: dict[str, Array], train: bool = False) -> Array:
        """Teacher-forced logits [B, L, V] of decoder inputs given the encoded image and prompt."""
        return self.text_decoder(tokens, context["tokens"], train=train, context_mask=context["mask"])[0]

    def decoder_inputs(self, context: dict[str, Array]) -> dict[str, Any]:
        """Decoding cross-attends to the encoder's output, its prompt pads hidden."""
        return {"context": context["tokens"], "context_mask": context["mask"]}

    def __call__(self, image: Array, text: Array, *, prompt: Array | None = None,
                 train: bool = False) -> tuple[tuple[None, None, Array], dict[str, Any]]:
        """image [B, H, W, 3] (or a NaFlex batch), decoder inputs `text` [B, L], prompt [B, P] → ((None, None,
        logits), aux)."""
        context, _ = self.encode(image, prompt, train)
        return (None, None, self.logits(text, context, train)), {"context": context}
