"""SigLIP 2's model (Tschannen et al. 2025): the SigLIP two-tower model plus a LocCa decoder that cross-attends to
the image tokens, and a DINO-style projection head onto prototypes for self-distillation (SILC) and masked
prediction (TIPS); the EMA teacher is a copy of "img" and "distill_head" kept outside the parameters. Only the
parts the recipe's loss weights switch on are built (no decoder without LocCa, no head or mask token without the
self-supervised terms)."""
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


def _lerp_axis(x: Array, axis: int, size: int) -> Array:
    """Linear resampling of one axis to `size` points at half-pixel centres, edges clamped (gathers and a lerp:
    no matmul, so the FLOP meter counts none)."""
    old = x.shape[axis]
    pos = jnp.clip((jnp.arange(size) + 0.5) * old / size - 0.5, 0.0, old - 1.0)
    lo = jnp.floor(pos).astype(jnp.int32)
    hi = jnp.minimum(lo + 1, old - 1)
    w = (pos - lo).reshape([size if i == axis else 1 for i in range(x.ndim)]).astype(x.dtype)
    return jnp.take(x, lo, axis=axis) * (1 - w) + jnp.take(x, hi, axis=axis) * w


def resize_posemb(posemb: Array, grid: tuple[int, int], new_grid: tuple[int, int]) -> Array:
    """A learned position embedding [1, gh·gw, D] bilinearly resampled to another patch grid [1, nh·nw, D]."""
    if tuple(grid) == tuple(new_grid):
        return posemb
    x = posemb.reshape(grid[0], grid[1], posemb.shape[-1])
    x = _lerp_axis(_lerp_axis(x, 0, new_grid[0]), 1, new_grid[1])
    return x.reshape(1, new_grid[0] * new_grid[1], posemb.shape[-1])


def image_params_at(params: Any, grid: tuple[int, int], new_grid: tuple[int, int]) -> Any:
    """Parameters with the image tower's learned position embedding resampled from the patch `grid` it was
    trained at to `new_grid`, so the same ViT encodes images of another size (a sincos ViT needs nothing)."""
    img = params["img"]
    if "pos_embedding" not in img:
        return params
    return {**params, "img": {**img, "pos_embedding": resize_posemb(img["pos_embedding"], grid, new_grid)}}


class SigLIP2(nn.Module):
    """Image tower "img", text tower "txt", logit scale "t" and bias "b"; with `decoder` a LocCa "decoder" over
    `decoder_vocab` ids (the text vocabulary, task tokens and box-coordinate bins); with `head` the "distill_head";
    with `mask_token` the image tower's learned mask token (TIPS)."""
    image: dict[str, Any]
    text: dict[str, Any]
    decoder: dict[str, Any] | None  # TextDecoder fields besides vocab_size / pad_id / max_len; None: no decoder
    head: dict[str, Any] | None  # DistillHead fields; None: no projection head
    embed_dim: int
    decoder_vocab: int = 0
    decoder_len: int = 0
    pad_id: int = 0
    mask_token: bool = False
    temperature_init: float = 10.0
    bias_init: float | None = -10.0

    def setup(self):
        self.img = ViT(**{"num_classes": self.embed_dim, **self.image, "mask_token": self.mask_token})
        self.txt = TextTransformer(**{"num_classes": self.embed_dim, **self.text})
        if self.decoder is not None:
            self.locca = TextDecoder(**{**self.decoder, "vocab_size": self.decoder_vocab, "pad_id": self.pad_id,
                                        "max_len": self.decoder_len, "cross_attention": True}, name="decoder")
        if self.head is not None:
            self.distill_head = DistillHead(**self.head)
        self.t_and_b = temperature_and_bias(self, self.temperature_init, self.bias_init)

    @property
    def prefix_tokens(self) -> int:
        """Encoder tokens before the patches (the CLS token of `pool_type="tok"`)."""
        return int(self.image.get("pool_type", "gap") == "tok")

    def encode_image(self, image: Array, patch_mask: Array | None = None, train: bool = False) -> dict[str, Array]:
        """{"z": unit embedding, "tokens": encoder tokens, "patches": the patch tokens among them, "pooled":
        pre-projection features}. `patch_mask` [B, patches]: patches replaced by the mask token."""
        out, aux = self.img(image, train=train, patch_mask=patch_mask)
        tokens = aux["encoded"]
        return {"z": l2_normalize(out), "tokens": tokens, "patches": tokens[:, self.prefix_tokens:],
                "pooled": aux["pre_logits"]}

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
        """Contrastive embeddings (the evaluators' entry); at init every built part runs once."""
        zimg, ztxt, aux = embed_pair(self, image, text, train)
        if self.is_initializing() and image is not None:
            im = self.encode_image(image, train=train)
            if self.head is not None:
                self.project(im["pooled"])
            if self.decoder is not None:
                self.decode(jnp.zeros((image.shape[0], self.decoder_len), jnp.int32), im["tokens"], train)
            if self.mask_token:
                self.encode_image(image, jnp.zeros(im["patches"].shape[:2], bool), train)
        return (zimg, ztxt), aux
