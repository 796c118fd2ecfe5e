"""ALIP's gates (Yang et al. 2023, as the released deepglint/ALIP training loop computes them): three running
means (momentum 0.99, starting at 1) of the batch's raw-text–caption, raw-text–image and caption–image cosines; a
sample weight exp(s_tc − m_tc)² capped at 1 (the language consistency gate), and pair weights exp(s − m)² for the
image–text and image–caption pairs, set to 1 where the sample weight was capped (the description consistency gate;
elsewhere they may exceed 1). The loss sums both paths' InfoNCE, each pair's loss scaled by its pair weight and
sample weight."""
from __future__ import annotations

import jax
import jax.numpy as jnp

MOMENTUM = 0.99  # the running means keep 0.99 of their value per step


def alip_gates(ztxt: jax.Array, zcap: jax.Array, zimg: jax.Array,
               means: dict[str, jax.Array]) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    """({"sample", "raw", "caption"} weights [B], the updated running means {"text_caption", "text_image",
    "caption_image"}) from unit embeddings; no gradient flows through either."""
    sg = jax.lax.stop_gradient
    sims = {"text_caption": jnp.sum(sg(ztxt) * sg(zcap), -1), "text_image": jnp.sum(sg(ztxt) * sg(zimg), -1),
            "caption_image": jnp.sum(sg(zcap) * sg(zimg), -1)}
    new = {k: (1 - MOMENTUM) * jnp.mean(s) + MOMENTUM * means[k] for k, s in sims.items()}
    raw_sample = jnp.exp(sims["text_caption"] - new["text_caption"]) ** 2
    capped = raw_sample >= 1
    weights = {"sample": jnp.where(capped, 1.0, raw_sample),
               "raw": jnp.where(capped, 1.0, jnp.exp(sims["text_image"] - new["text_image"]) ** 2),
               "caption": jnp.where(capped, 1.0, jnp.exp(sims["caption_image"] - new["caption_image"]) ** 2)}
    return weights, new
