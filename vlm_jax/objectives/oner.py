"""OneR (Jang et al. 2023) on the trainer: one transformer embeds images, captions and image+caption sequences into
one space (`models/oner.py`), trained with image–text contrast, cross-modal mixup contrast and contextual mixup
contrast (`losses/oner.py`). The paper's internals beyond its abstract were not available here; the three terms are
this project's reading of their names (docs/contrastive_family.md says which choices are ours)."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from vlm_jax.config import check_keys
from vlm_jax.losses.mixup import mixup_beta
from vlm_jax.losses.oner import mixup_token_masks, oner_loss
from vlm_jax.models.oner import IMAGE_KEYS, TEXT_KEYS, OneR
from vlm_jax.objectives.contrastive import ContrastiveObjective
from vlm_jax.train.objective import LossOut, Normalizers, register

# xmc_weight / cmc_weight: the two mixup terms beside image–text contrast (weight 1); mixup_beta: λ ~ Beta(β, β)
# per batch for the contextual mixup (β 1: uniform). All three are our choices.
ONER_DEFAULTS = dict(xmc_weight=1.0, cmc_weight=1.0, mixup_beta=1.0)
MODEL_KEYS = ("image", "text", "embed_dim", "temperature_init")  # no bias: every term is InfoNCE


@register("oner")
class OneRObjective(ContrastiveObjective):
    """One tower; InfoNCE on image–text, image+text–image, image+text–text and contextual mixups."""

    NAFLEX = False  # fixed patch grid (the position table and the mixup's patch count)
    CONTRASTIVE_SMOOTHING = False
    OWN_LOSS_DEFAULTS = ONER_DEFAULTS
    WHOLE_BATCH_INFONCE = "OneR's contextual mixup pairs each example with its reversed partner in the whole batch"
    WHOLE_BATCH_STEP = "OneR draws one mixup weight for the whole batch and mixes each example with its partner"

    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        self.beta = mixup_beta(self.cfg)

    def check_config(self, config: ml_collections.ConfigDict) -> None:
        """OneR's model keys (one encoder: the image section sizes it, the text section names the vocabulary)."""
        check_keys(config.model, MODEL_KEYS, "model")
        check_keys(config.model.get("image", {}), IMAGE_KEYS, "model.image")
        check_keys(config.model.get("text", {}), TEXT_KEYS, "model.text")
        self.check_loss_and_step(config)

    def model(self) -> nn.Module:
        m = self.config.model
        text = dict(m.text)
        if not text.get("vocab_size"):
            text["vocab_size"] = self.data.vocab_size  # 0 → the dataset tokenizer's vocabulary
        return OneR(image=dict(m.image), text=text, embed_dim=m.embed_dim, image_size=self.data.image_size,
                    temperature_init=m.get("temperature_init", 10.0))

    def embeddings(self, params: Any, batch: dict[str, jax.Array], rng: jax.Array, train: bool = True,
                   lam: jax.Array | None = None) -> tuple[tuple[dict[str, jax.Array], jax.Array], jax.Array]:
        """(The four sequences' unit embeddings {"image", "text", "cross", "mix"}, t), and λ (drawn unless given).
        The patches and tokens are embedded once and shared by every sequence; the mix pairs image i with the
        caption of B − 1 − i."""
        k_lam, k_keep, k_drop = jax.random.split(rng, 3)
        if lam is None:
            lam = jax.random.beta(k_lam, self.beta, self.beta)

        def run(m: OneR, image: jax.Array, text: jax.Array) -> tuple[dict[str, jax.Array], jax.Array]:
            img = m.image_tokens(image)
            txt, valid = m.text_tokens(text)
            every = jnp.ones(img.shape[:2], bool)
            keep_img, keep_txt = mixup_token_masks(k_keep, jnp.flip(valid, 0), img.shape[1], lam)
            z = {"image": m.encode(img, every, train)[0], "text": m.encode(txt, valid, train)[0],
                 "cross": m.encode(jnp.concatenate([img, txt], 1), jnp.concatenate([every, valid], 1), train)[0],
                 "mix": m.encode(jnp.concatenate([img, jnp.flip(txt, 0)], 1),
                                 jnp.concatenate([keep_img, keep_txt], 1), train)[0]}
            return z, m.temperature()["t"]

        return self.model().apply({"params": params}, batch["image"], batch["text"], method=run,
                                  rngs={"dropout": k_drop}), lam

    def loss(self, params: Any, extra: Any, batch: dict[str, jax.Array], rng: jax.Array, train: bool = True,
             norm: Normalizers | None = None) -> LossOut:
        """Training: the three contrasts (`losses/oner.py`). Otherwise image–text InfoNCE."""
        if not train:
            return super().loss(params, extra, batch, rng, train, norm)
        (z, t), lam = self.embeddings(params, batch, rng, train)
        loss, metrics = oner_loss(z["image"], z["text"], z["cross"], z["mix"], t, lam,
                                  float(self.cfg["xmc_weight"]), float(self.cfg["cmc_weight"]))
        return loss, (dict(metrics, t=t), extra)

    def forward_flops(self, batch: dict[str, Any], phase: int = 0) -> dict[str, float]:
        """The patch projection once; the encoder over [CLS] + N patches, [CLS] + L tokens and twice over
        [CLS] + N + L (masked positions are computed too); four projections; five B×B similarity matrices."""
        from vlm_jax.scaling.compute import dense, encoder_stack, vit_config

        c = vit_config(dict(self.config.model.image))
        b, size, _, ch = batch["image"].shape
        length, w, e = batch["text"].shape[1], c["width"], int(self.config.model.embed_dim)
        (ph, pw) = c["patch_size"]
        n = (size // ph) * (size // pw)
        stack = lambda tokens: b * encoder_stack(tokens, w, c["depth"], c["mlp_dim"], c["num_heads"])  # noqa: E731
        return {"patch_embed": b * dense(n, ph * pw * ch, w), "image": stack(1 + n), "text": stack(1 + length),
                "joint": 2 * stack(1 + n + length), "head": 4 * dense(b, w, e), "similarity": 5 * dense(b, e, b)}
