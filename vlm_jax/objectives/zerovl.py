"""ZeroVL (Cui et al. 2022) on the two-tower trainer: coin-flipping mixup (`losses/mixup.py`: per batch either the
images or the texts' projected embeddings are mixed with the batch reversed, and InfoNCE's targets split α / 1 − α)
with debiased sampling from the data (`data.sampling='sources'`: each batch from one training style), as the
released code (zerovl/ZeroVL: `MixUpNCE`, `get_mixup_kwargs`, mixup β 0.1) does it."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from vlm_jax.losses.mixup import draw_mixup, mix_with_reversed, mixup_beta, mixup_infonce
from vlm_jax.models.two_tower import l2_normalize
from vlm_jax.objectives.contrastive import ContrastiveObjective
from vlm_jax.train.objective import LossOut, Normalizers, register

# mixup_beta: α ~ Beta(β, β) (the released config: 0.1, so α is mostly near 0 or 1)
ZEROVL_DEFAULTS = dict(mixup_beta=0.1)


@register("zerovl")
class ZeroVLObjective(ContrastiveObjective):
    """InfoNCE with coin-flipping mixup of images or texts against the reversed batch."""

    NAFLEX = False  # pixel mixup needs equal image shapes
    CONTRASTIVE_SMOOTHING = False
    OWN_LOSS_DEFAULTS = ZEROVL_DEFAULTS
    WHOLE_BATCH_INFONCE = "ZeroVL mixes each pair with its partner in the reversed batch"
    WHOLE_BATCH_STEP = "ZeroVL mixes each example with its partner in the whole batch reversed"

    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        self.beta = mixup_beta(self.cfg)

    def loss(self, params: Any, extra: Any, batch: dict[str, jax.Array], rng: jax.Array, train: bool = True,
             norm: Normalizers | None = None) -> LossOut:
        """Training: draw α and the coin, mix the images or the text embeddings, mixup InfoNCE. Otherwise InfoNCE."""
        if not train:
            return super().loss(params, extra, batch, rng, train, norm)
        k_mix, k_drop = jax.random.split(rng)
        alpha, mix_images = draw_mixup(k_mix, self.beta)
        image = jnp.where(mix_images, mix_with_reversed(batch["image"], alpha), batch["image"])
        (zimg, _), aux = self.model().apply({"params": params}, image, batch["text"], train=train,
                                            rngs={"dropout": k_drop})
        text = aux["txt/unnormed"]
        ztxt = l2_normalize(jnp.where(mix_images, text, mix_with_reversed(text, alpha)))
        loss, metrics = mixup_infonce(zimg, ztxt, aux["t"], alpha)
        return loss, (dict(metrics, t=aux["t"], mixup_alpha=alpha, mixup_images=mix_images.astype(jnp.float32)),
                      extra)
