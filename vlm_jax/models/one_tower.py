"""One-tower CLIPPO model: a single ViT embeds images and text rendered as images."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlm_jax.models import layers
from vlm_jax.models.two_tower import l2_normalize, temperature_and_bias
from vlm_jax.models.vit import ViT

Array = jax.Array


class OneTower(nn.Module):
    """CLIPPO (Tschannen et al. 2023): shared ViT for both modalities, optional separate projection heads."""
    image: dict[str, Any]  # ViT fields
    embed_dim: int
    temperature_init: float = 10.0
    bias_init: float | None = None
    separate_heads: bool = False

    def _embed(self, tower: ViT, x: Array, head: nn.Module | None, prefix: str, aux: dict, train: bool) -> Array:
        out, tower_aux = tower(x, train=train)
        aux.update({f"{prefix}/{k}": v for k, v in tower_aux.items()})
        if head is not None:
            out = head(out).astype(jnp.float32)
        aux[f"{prefix}/unnormed"] = out
        return l2_normalize(out)

    @nn.compact
    def __call__(self, image: Array | None, text: Array | None, *,
                 train: bool = False) -> tuple[tuple[Array | None, Array | None], dict[str, Any]]:
        """`text` is rendered text, float [B, S, S, 3] like `image`."""
        heads = {"num_classes": None} if self.separate_heads else {"num_classes": self.embed_dim}
        tower = ViT(**{**self.image, **heads}, name="tower")
        dtype = self.image.get("dtype_mm", "float32")
        img_head = txt_head = None
        if self.separate_heads:
            img_head = layers.dense(self.embed_dim, ("embed", None), dtype, name="img_head")
            txt_head = layers.dense(self.embed_dim, ("embed", None), dtype, name="txt_head")
        aux: dict[str, Any] = {}
        zimg = None if image is None else self._embed(tower, image, img_head, "img", aux, train)
        ztxt = None if text is None else self._embed(tower, text, txt_head, "txt", aux, train)
        aux.update(temperature_and_bias(self, self.temperature_init, self.bias_init))
        return (zimg, ztxt), aux
