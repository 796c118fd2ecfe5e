"""Two-tower (CLIP / SigLIP style) image-text model with learnable temperature and bias."""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlm_jax.models.text import TextTransformer
from vlm_jax.models.vit import ViT

Array = jax.Array


def _l2_normalize(x: Array, eps: float = 1e-12) -> Array:
    """L2-normalises the last axis in float32."""
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps))


class TwoTower(nn.Module):
    """ViT image tower + text transformer tower projecting into a shared embedding space."""
    image: dict[str, Any]
    text: dict[str, Any]
    embed_dim: int
    temperature_init: float = 10.0
    bias_init: float | None = None

    @nn.compact
    def __call__(self, image: Array | None, text: Array | None, *,
                 train: bool = False) -> tuple[tuple[Array | None, Array | None], dict[str, Any]]:
        aux: dict[str, Any] = {}
        zimg = ztxt = None
        if image is not None:
            out, tower_aux = ViT(**{"num_classes": self.embed_dim, **self.image}, name="img")(image, train=train)
            aux.update({f"img/{k}": v for k, v in tower_aux.items()})
            aux["img/unnormed"] = out
            zimg = _l2_normalize(out)
        if text is not None:
            out, tower_aux = TextTransformer(**{"num_classes": self.embed_dim, **self.text}, name="txt")(
                text, train=train)
            aux.update({f"txt/{k}": v for k, v in tower_aux.items()})
            aux["txt/unnormed"] = out
            ztxt = _l2_normalize(out)

        t_init = nn.with_logical_partitioning(nn.initializers.constant(math.log(self.temperature_init)), ())
        t = self.param("t", t_init, (), jnp.float32)
        aux["t/parameter"] = t
        aux["t"] = jnp.exp(t)
        if self.bias_init is not None:
            b_init = nn.with_logical_partitioning(nn.initializers.constant(self.bias_init), ())
            aux["b"] = self.param("b", b_init, (), jnp.float32)
        return (zimg, ztxt), aux
