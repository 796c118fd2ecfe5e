"""DeCLIP (Li et al. 2022) on the two-tower trainer: supervision beyond the pairs. Each step sees a second image view
(a random crop scaled back, flipped at random) and a second text view (random word deletion); the contrastive term
averages InfoNCE over the 2 × 2 view pairs (multi-view supervision); SimSiam ties the two image views (predictor on
the image embedding); masked language modelling runs the text tower on BERT-masked captions with logits tied to
its token embeddings; and each image also takes as a positive the nearest neighbour of its caption's embedding in a
FIFO queue of past text embeddings kept in the train state (`extra`: checkpointed, exactly resumed).

loss = (1 − w_ssl − w_mlm − w_nn) · multi-view InfoNCE + w_ssl · SimSiam + w_mlm · MLM + w_nn · NN InfoNCE."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from vlm_jax.losses.contrastive import infonce_loss
from vlm_jax.losses.declip import delete_tokens, enqueue, nearest_neighbours, simsiam_loss
from vlm_jax.losses.generative import token_cross_entropy
from vlm_jax.losses.masked import caption_mlm
from vlm_jax.models import TwoTower
from vlm_jax.objectives.contrastive import ContrastiveObjective
from vlm_jax.objectives.views import resized_crops
from vlm_jax.train.objective import LossOut, Normalizers, register

# Weights of the three extra terms (0.2 each as we read the paper; the multi-view InfoNCE takes the rest); the
# queue's length; BERT's masking rate; the second views: crop side fraction and word-deletion rate (EDA's 0.1)
DECLIP_DEFAULTS = dict(ssl_weight=0.2, mlm_weight=0.2, nn_weight=0.2, queue_size=4096, mlm_ratio=0.15,
                       crop_fraction=0.5, word_deletion=0.1)


@register("declip")
class DeCLIPObjective(ContrastiveObjective):
    """Multi-view InfoNCE + SimSiam + MLM + nearest-neighbour InfoNCE from a text-embedding queue."""

    NAFLEX = False  # the second view crops square pixel images
    CONTRASTIVE_SMOOTHING = False
    OWN_LOSS_DEFAULTS = DECLIP_DEFAULTS
    OWN_MODEL_KEYS = ("predictor",)
    WHOLE_BATCH_INFONCE = "DeCLIP's terms are computed over the whole batch"
    WHOLE_BATCH_STEP = "DeCLIP's views, masks and queue are drawn for the whole batch"

    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        extra = sum(float(self.cfg[k]) for k in ("ssl_weight", "mlm_weight", "nn_weight"))
        if any(float(self.cfg[k]) < 0 for k in ("ssl_weight", "mlm_weight", "nn_weight")) or extra >= 1.0:
            raise ValueError(f"DeCLIP's loss.ssl_weight, mlm_weight and nn_weight are >= 0 and sum below 1 (the "
                             f"multi-view InfoNCE takes the rest), got sum {extra}")
        if int(self.cfg["queue_size"]) < 1:
            raise ValueError(f"loss.queue_size must be >= 1, got {self.cfg['queue_size']}")
        if not hasattr(self.data, "special_ids"):
            raise ValueError("DeCLIP's masked language modelling needs a tokenizer with a mask id (token text)")

    def model(self) -> nn.Module:
        base, ids = super().model(), self.data.special_ids
        text = dict(base.text)
        if not self.config.model.text.get("vocab_size"):
            text["vocab_size"] = ids["vocab"]  # the tokenizer's pieces + BOS + MASK
        predictor = int(self.config.model.get("predictor", 0) or 0) or max(int(base.embed_dim) // 4, 1)
        return TwoTower(image=base.image, text=text, embed_dim=base.embed_dim, temperature_init=base.temperature_init,
                        bias_init=base.bias_init, text_tower=base.text_tower, predictor=predictor)

    def init_extra(self, params: Any) -> Any:
        """The text-embedding queue (empty), where the next rows go, and how many rows are filled."""
        k, d = int(self.cfg["queue_size"]), int(self.config.model.embed_dim)
        return {"queue": jnp.zeros((k, d), jnp.float32), "pointer": jnp.zeros((), jnp.int32),
                "filled": jnp.zeros((), jnp.int32)}

    def second_views(self, rng: jax.Array, image: jax.Array, text: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(a resized random crop of each image, each caption with random words deleted)."""
        ids = self.data.special_ids
        k_img, k_txt = jax.random.split(rng)
        keep = tuple(int(i) for i in (ids["bos"], ids["eos"]) if int(i) >= 0)
        return (resized_crops(k_img, image, float(self.cfg["crop_fraction"])),
                delete_tokens(k_txt, text, ids["pad"], keep, float(self.cfg["word_deletion"])))

    def mlm_inputs(self, rng: jax.Array, text: jax.Array) -> tuple[jax.Array, jax.Array]:
        """BERT-masked captions and the chosen positions (`caption_mlm`)."""
        return caption_mlm(rng, text, self.data.special_ids, self.data.vocab_size, float(self.cfg["mlm_ratio"]))

    def loss(self, params: Any, extra: Any, batch: dict[str, jax.Array], rng: jax.Array, train: bool = True,
             norm: Normalizers | None = None) -> LossOut:
        """Training: every DeCLIP term and the queue's update. Otherwise CLIP's InfoNCE (extra unchanged)."""
        if not train:
            return super().loss(params, extra, batch, rng, train, norm)
        cfg = self.cfg
        k_views, k_mask, k_drop = jax.random.split(rng, 3)
        image, text = batch["image"], batch["text"]
        b = image.shape[0]
        image2, text2 = self.second_views(k_views, image, text)
        masked, chosen = self.mlm_inputs(k_mask, text)
        (zimg, ztxt), aux = self.model().apply({"params": params}, jnp.concatenate([image, image2]),
                                               jnp.concatenate([text, text2, masked]), train=train,
                                               rngs={"dropout": k_drop})
        t = aux["t"]
        views_i, views_t = (zimg[:b], zimg[b:]), (ztxt[:b], ztxt[b:2 * b])
        pairs = [infonce_loss(zi, zt, t) for zi in views_i for zt in views_t]
        multiview = sum(loss for loss, _ in pairs) / len(pairs)
        ssl = simsiam_loss(aux["img/predicted"][:b], aux["img/unnormed"][:b], aux["img/predicted"][b:],
                           aux["img/unnormed"][b:])
        table = params["txt"]["embedding"]["embedding"]  # MLM logits tied to the input token embeddings
        logits = jnp.einsum("bld,vd->blv", aux["txt/encoded"][2 * b:].astype(jnp.float32), table.astype(jnp.float32))
        mlm, mlm_metrics = token_cross_entropy(logits, text, chosen)
        neighbours, _ = nearest_neighbours(jax.lax.stop_gradient(views_t[0]), extra["queue"], extra["filled"])
        nn_loss, _ = infonce_loss(views_i[0], neighbours, t)
        nn_loss = jnp.where(extra["filled"] > 0, nn_loss, 0.0)  # nothing queued yet at the first step
        w_ssl, w_mlm, w_nn = (float(cfg[k]) for k in ("ssl_weight", "mlm_weight", "nn_weight"))
        total = (1 - w_ssl - w_mlm - w_nn) * multiview + w_ssl * ssl + w_mlm * mlm + w_nn * nn_loss
        queue, pointer, filled = enqueue(extra["queue"], extra["pointer"], extra["filled"],
                                         jax.lax.stop_gradient(views_t[0]))
        metrics = dict(pairs[0][1], t=t, multiview_loss=multiview, simsiam_loss=ssl, mlm_loss=mlm,
                       mlm_accuracy=mlm_metrics["token_accuracy"], nn_loss=nn_loss,
                       queue_filled=filled.astype(jnp.float32))
        return total, (metrics, {"queue": queue, "pointer": pointer, "filled": filled})

    def forward_flops(self, batch: dict[str, Any], phase: int = 0) -> dict[str, float]:
        """Two image views and three text passes (caption, its deletion view, the masked one), the tied MLM logits,
        four view-pair similarity matrices and the neighbours' one (no gradient on the queued side); the queue search
        runs forward only."""
        from vlm_jax.scaling.compute import dense

        out = super().forward_flops(batch, phase)
        bsz, length = batch["text"].shape
        m = self.model()
        d, width = int(m.embed_dim), int(m.text.get("width", 512))
        image_parts = ("patch_embed", "image")
        for key in image_parts:
            out[key] *= 2
        out["text"] *= 3
        out["mlm_head"] = bsz * dense(length, width, int(m.text["vocab_size"]))
        sim = out["similarity"]
        out["similarity"] = 4 * sim
        out["no_input_grad"] = out.get("no_input_grad", 0.0) + sim  # the neighbours (from the queue) take no gradient
        out["forward_only"] = out.get("forward_only", 0.0) + dense(bsz, d, int(self.cfg["queue_size"]))
        return out
