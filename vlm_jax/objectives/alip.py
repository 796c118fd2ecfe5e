"""ALIP (Yang et al. 2023) on the two-tower trainer: every image has its raw caption (noisy when `data.caption_noise`
is set) and a second, clean caption ("caption": `data.alt_captions`, standing in for ALIP's synthetic captions from
a captioning model); both paths are contrasted with the image, each pair's loss scaled by ALIP's gates
(`losses/alip.py`), whose running means live in the train state."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from vlm_jax.losses.alip import alip_gates
from vlm_jax.losses.nlip import weighted_infonce
from vlm_jax.objectives.contrastive import ContrastiveObjective
from vlm_jax.train.objective import LossOut, Normalizers, register


@register("alip")
class ALIPObjective(ContrastiveObjective):
    """InfoNCE on image–raw text and image–caption, weighted per sample and per pair."""

    NAFLEX = False  # the recipe's data (emoji TFDS captions) is square
    CONTRASTIVE_SMOOTHING = False
    WHOLE_BATCH_INFONCE = "ALIP weighs the pairs of InfoNCE over the whole batch"
    WHOLE_BATCH_STEP = "ALIP's gates use the whole batch's mean similarities"

    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        if not getattr(self.data, "alt_captions", False):
            raise ValueError("ALIP contrasts a second caption per image: set data.alt_captions=True (emoji data)")

    def init_extra(self, params: Any) -> Any:
        """The gates' running mean similarities, starting at 1 as in the released code."""
        return {k: jnp.ones((), jnp.float32) for k in ("text_caption", "text_image", "caption_image")}

    def loss(self, params: Any, extra: Any, batch: dict[str, jax.Array], rng: jax.Array, train: bool = True,
             norm: Normalizers | None = None) -> LossOut:
        """Training: both paths, gated. Otherwise CLIP's InfoNCE on the raw captions (extra unchanged)."""
        if not train:
            return super().loss(params, extra, batch, rng, train, norm)
        text = batch["text"]
        caption = batch.get("caption", text)  # traced from `init_batch` shapes (FLOP counts): the text stands in
        b = text.shape[0]
        (zimg, zboth), aux = self.model().apply({"params": params}, batch["image"], jnp.concatenate([text, caption]),
                                                train=train, rngs={"dropout": rng})
        ztxt, zcap, t = zboth[:b], zboth[b:], aux["t"]
        w, means = alip_gates(ztxt, zcap, zimg, extra)
        _, raw_pairs, metrics = weighted_infonce(zimg, ztxt, t, w["raw"])
        _, cap_pairs, _ = weighted_infonce(zimg, zcap, t, w["caption"])
        loss_raw = jnp.mean(raw_pairs * w["raw"] * w["sample"])
        loss_cap = jnp.mean(cap_pairs * w["caption"] * w["sample"])
        metrics = dict(metrics, t=t, raw_loss=loss_raw, caption_loss=loss_cap, sample_weight_mean=jnp.mean(w["sample"]),
                       raw_weight_mean=jnp.mean(w["raw"]), caption_weight_mean=jnp.mean(w["caption"]),
                       **{f"mean_{k}": v for k, v in means.items()})
        return loss_raw + loss_cap, (metrics, means)

    def forward_flops(self, batch: dict[str, Any], phase: int = 0) -> dict[str, float]:
        """The towers with two captions per image, and both paths' similarity matrices."""
        out = super().forward_flops(batch, phase)
        out["text"] *= 2
        out["similarity"] *= 2
        return out
