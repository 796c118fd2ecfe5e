"""SigLIP 2's model (Tschannen et al. 2025): the SigLIP two-tower model plus a LocCa decoder that cross-attends to
the image tokens, and a DINO-style projection head onto prototypes for self-distillation (SILC) and masked
prediction (TIPS); the EMA teacher is a copy of "img" and "distill_head" kept outside the parameters."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlm_jax.models import layers
from vlm_jax.models.decoder import TextDecoder
from vlm_jax.models.text import TextTransformer
from vlm_jax.models.two_tower import embed_pair, l2_normalize, temperature_and_bias
from vlm_jax.models.vit import ViT

Array = jax.Array
TEACHER = ("img", "distill_head")  # the parameter subtrees the EMA teacher copies


class DistillHead(nn.Module):
    """MLP → bottleneck → unit norm → prototype logits (DINO's projection head, without weight norm)."""
    hidden: int = 256
    bottleneck: int = 64
    prototypes: int = 256

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = jax.nn.gelu(layers.dense(self.hidden, ("embed", "mlp"), "float32", name="mlp_0")(x))
        x = jax.nn.gelu(layers.dense(self.hidden, ("mlp", "embed"), "float32", name="mlp_1")(x))
        x = l2_normalize(layers.dense(self.bottleneck, ("embed", None), "float32", name="bottleneck")(x))
        return layers.dense(self.prototypes, (None, None), "float32", name="prototypes")(x)


class SigLIP2(nn.Module):
    """Image tower "img" (with a mask token), text tower "txt", logit scale "t" and bias "b", LocCa "decoder"
    over `decoder_vocab` ids (the text vocabulary, task tokens and box-coordinate bins), "distill_head"."""
    image: dict[str, Any]
    text: dict[str, Any]
    decoder: dict[str, Any]  # TextDecoder fields besides vocab_size / pad_id / max_len
    head: dict[str, Any]  # DistillHead fields
    embed_dim: int
    decoder_vocab: int
    decoder_len: int
    pad_id: int = 0
    temperature_init: float = 10.0
    bias_init: float | None = -10.0

    def setup(self):
        self.img = ViT(**{"num_classes": self.embed_dim, **self.image, "mask_token": True})
        self.txt = TextTransformer(**{"num_classes": self.embed_dim, **self.text})
        self.locca = TextDecoder(**{**self.decoder, "vocab_size": self.decoder_vocab, "pad_id": self.pad_id,
                                    "max_len": self.decoder_len, "cross_attention": True}, name="decoder")
        self.distill_head = DistillHead(**self.head)
        self.t_and_b = temperature_and_bias(self, self.temperature_init, self.bias_init)

    def encode_image(self, image: Array, patch_mask: Array | None = None, train: bool = False) -> dict[str, Array]:
        """{"z": unit embedding, "tokens": encoder tokens, "pooled": pre-projection features}."""
        out, aux = self.img(image, train=train, patch_mask=patch_mask)
        return {"z": l2_normalize(out), "tokens": aux["encoded"], "pooled": aux["pre_logits"]}

    def decode(self, inputs: Array, image_tokens: Array, train: bool = False) -> Array:
        """LocCa logits [B, L, decoder_vocab] of teacher-forced `inputs` attending to `image_tokens`."""
        return self.locca(inputs, image_tokens, train=train)[0]

    def project(self, x: Array) -> Array:
        """Prototype logits of features (pooled [B, D] or tokens [B, N, D])."""
        return self.distill_head(x)

    def encode_text(self, tokens: Array, train: bool = False) -> dict[str, Array]:
        """{"z": unit text embedding}."""
        return {"z": l2_normalize(self.txt(tokens, train=train)[0])}

    def temperature(self) -> dict[str, Array]:
        """{"t": exp(log t)} and, with a bias, {"b"}."""
        return {k: v for k, v in self.t_and_b.items() if k in ("t", "b")}

    def __call__(self, image: Array | None, text: Array | None, *,
                 train: bool = False) -> tuple[tuple[Array | None, Array | None], dict[str, Any]]:
        """Contrastive embeddings (the evaluators' entry); at init every part runs once."""
        zimg, ztxt, aux = embed_pair(self, image, text, train)
        if self.is_initializing() and image is not None:
            im = self.encode_image(image, train=train)
            self.project(im["pooled"])
            self.decode(jnp.zeros((image.shape[0], self.decoder_len), jnp.int32), im["tokens"], train)
            self.encode_image(image, jnp.zeros(image.shape[:1] + im["tokens"].shape[1:2], bool), train)
        return (zimg, ztxt), aux
