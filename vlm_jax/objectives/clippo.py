"""CLIPPO: image and alt-text rendered as pixels through one shared ViT, with a contrastive loss."""
from __future__ import annotations

import flax.linen as nn
import ml_collections

from vlm_jax.config import check_keys
from vlm_jax.models import OneTower, ViT
from vlm_jax.objectives.contrastive import LOSS_KEYS, ContrastiveObjective, check_module_fields
from vlm_jax.train.objective import register

MODEL_KEYS = ("image", "embed_dim", "temperature_init", "bias_init", "separate_heads")


@register("clippo")
class ClippoObjective(ContrastiveObjective):
    """The contrastive objective with a one-tower model; needs `data.text_format = "render"`."""

    NAFLEX = False  # one tower for images and rendered text: fixed resolution only

    def check_config(self, config: ml_collections.ConfigDict) -> None:
        """Model keys of the one-tower model; the data must render text."""
        check_keys(config.model, MODEL_KEYS, "model")
        check_keys(config.loss, LOSS_KEYS, "loss")
        check_module_fields(config.model.get("image", {}), ViT, "model.image")
        if config.data.get("text_format", "tokens") != "render":
            raise ValueError("objective 'clippo' reads text as images: set data.text_format='render'")

    def model(self) -> nn.Module:
        m = self.config.model
        return OneTower(image=dict(m.image), embed_dim=m.embed_dim, temperature_init=m.get("temperature_init", 10.0),
                        bias_init=m.get("bias_init", None), separate_heads=m.get("separate_heads", False))
