"""Image encoder + text decoder: CapPa / captioning, and CoCa when it also has contrastive heads.

The ViT's output tokens (no pooling), optionally pooled to `cap_queries` tokens by an attention pooler, are the
decoder's cross-attention context. With `embed_dim` > 0 (CoCa) a one-query attention pooler gives the image
embedding and the decoder's CLS output (its unimodal half, see `TextDecoder`) the text embedding, both projected
to `embed_dim` and L2-normalised, with a learned temperature (and bias) like the two-tower model. Decoding goes
through the `TextGenerator` seam (init_cache / prefill / decode_step).
"""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlm_jax.models import layers
from vlm_jax.models.decoder import TextDecoder, TextGenerator
from vlm_jax.models.two_tower import l2_normalize
from vlm_jax.models.vit import ViT

Array = jax.Array


class Captioner(TextGenerator):
    """ViT encoder → (pooled) image tokens → TextDecoder; CoCa's contrastive heads when `embed_dim` > 0."""
    image: dict[str, Any]
    decoder: dict[str, Any]
    embed_dim: int = 0
    cap_queries: int = 0  # 0: the decoder reads every ViT token; n: an n-query attention pooler (CoCa: 256)
    temperature_init: float = 10.0
    bias_init: float | None = None

    def setup(self) -> None:
        self.vit = ViT(**{**self.image, "pool_type": "none", "num_classes": None}, name="img")
        self.text_decoder = TextDecoder(**self.decoder, name="decoder")
        heads = self.decoder.get("num_heads", 8)
        dtype_mm = self.decoder.get("dtype_mm", "float32")
        if self.cap_queries:
            self.cap_pooler = layers.AttentionPooler(self.cap_queries, heads, dtype_mm=dtype_mm, name="cap_pooler")
        if self.embed_dim:
            self.con_pooler = layers.AttentionPooler(1, heads, dtype_mm=dtype_mm, name="con_pooler")
            self.img_proj = layers.dense(self.embed_dim, ("embed", None), dtype_mm, name="img_proj")
            self.txt_proj = layers.dense(self.embed_dim, ("embed", None), dtype_mm, name="txt_proj")
            init = lambda v: nn.with_logical_partitioning(nn.initializers.constant(v), ())  # noqa: E731
            self.t = self.param("t", init(math.log(self.temperature_init)), (), jnp.float32)
            if self.bias_init is not None:
                self.b = self.param("b", init(self.bias_init), (), jnp.float32)

    def encode(self, image: Array | dict[str, Array], prompt: Array | None = None,
               train: bool = False) -> tuple[Any, Array | None]:
        """Decoder context and, for CoCa, the unit-norm image embedding [B, E] (else None). The context is the
        (pooled) image tokens [B, T', D]; for NaFlex images read token by token, {"tokens", "mask"} (padding
        masked out of the decoder's cross-attention; the poolers mask it too)."""
        if prompt is not None:
            raise ValueError("a Captioner takes no prompt (use the 'pali' objective for prompted tasks)")
        tokens, aux = self.vit(image, train=train)
        mask = aux.get("mask")  # NaFlex: the real patches
        context: Any = self.cap_pooler(tokens, mask) if self.cap_queries else tokens
        if mask is not None and not self.cap_queries:
            context = {"tokens": tokens, "mask": mask}
        zimg = None
        if self.embed_dim:
            zimg = l2_normalize(self.img_proj(self.con_pooler(tokens, mask)[:, 0]))
        return context, zimg

    def embed_text(self, tokens: Array) -> Array:
        """CoCa's unit-norm text embedding of decoder inputs [B, L] (the unimodal blocks only)."""
        _, aux = self.text_decoder(tokens, None, unimodal_only=True)
        return l2_normalize(self.txt_proj(aux["cls"]))

    def decoder_inputs(self, context: Any) -> dict[str, Any]:
        """Decoding cross-attends to the (pooled) image tokens (only the real ones of a NaFlex context)."""
        if isinstance(context, dict):
            return {"context": context["tokens"], "context_mask": context["mask"]}
        return {"context": context}

    def logits(self, tokens: Array, context: Any) -> Array:
        """Teacher-forced logits [B, L, V] of decoder inputs given the image context."""
        kw = self.decoder_inputs(context)
        return self.text_decoder(tokens, kw["context"], context_mask=kw.get("context_mask"))[0]

    def __call__(self, image: Array, text: Array, *, train: bool = False,
                 parallel: Array | None = None) -> tuple[tuple[Array | None, Array | None, Array], dict[str, Any]]:
        """image [B, H, W, 3] (or a NaFlex batch), decoder inputs `text` [B, L] → ((zimg, ztxt, logits [B, L, V]),
        aux with t (and b))."""
        context, zimg = self.encode(image, train=train)
        kw = self.decoder_inputs(context)
        logits, dec_aux = self.text_decoder(text, kw["context"], train=train, parallel=parallel,
                                            context_mask=kw.get("context_mask"))
        aux: dict[str, Any] = {"context": context}
        ztxt = None
        if self.embed_dim:
            ztxt = l2_normalize(self.txt_proj(dec_aux["cls"]))
            aux.update({"t/parameter": self.t, "t": jnp.exp(self.t)})
            if self.bias_init is not None:
                aux["b"] = self.b
        return (zimg, ztxt, logits), aux
