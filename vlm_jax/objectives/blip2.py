"""BLIP-2 stage 1 (Li et al. 2023): the Q-Former learns to pull language-relevant features out of the image
encoder with three losses that share its parameters and differ in what attends to what (`models/qformer.py`):
image–text contrast (the best query against the text's [CLS]), image–text matching on the matched pairs and on
hard negatives drawn from the contrastive similarities, and image-grounded caption generation. Evaluated by
zero-shot classification and retrieval with the contrastive score."""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from vlm_jax.config import check_keys
from vlm_jax.config_audit import merged
from vlm_jax.data import image_text as datasets
from vlm_jax.evals.embedder import QueryMaxEmbedder
from vlm_jax.losses.blip2 import hard_negatives, itc_loss, query_similarity
from vlm_jax.losses.generative import token_cross_entropy
from vlm_jax.models.qformer import DATA_DECIDED, QFormer, QFormerStage1, qformer_fields
from vlm_jax.models.vit import ViT
from vlm_jax.objectives.contrastive import check_module_fields
from vlm_jax.train.objective import Evaluator, LossOut, Normalizers, Objective, register

MODEL_KEYS = ("image", "qformer", "embed_dim", "temperature_init")
LOSS_DEFAULTS = dict(itc_weight=1.0, itm_weight=1.0, itg_weight=1.0, label_smoothing=0.0)
EVAL_KEYS = dict(batch_size=256, sets=["emoji", "fashion_mnist"], templates=None, languages=[])  # data.evaluators


@register("blip2_qformer")
class QFormerObjective(Objective):
    """ITC + ITM (with hard negatives) + ITG on one Q-Former; the image encoder trains unless `optim.freeze`
    holds `img/` (BLIP-2 freezes a pretrained one)."""

    CONFIG_DEFAULTS = {"loss": LOSS_DEFAULTS, "evals": EVAL_KEYS}
    TRACED_FLOPS = True  # no analytic count: the traced step's FLOPs (frozen weight gradients skipped)

    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        check_keys(config.model, MODEL_KEYS, "model")
        check_module_fields(config.model.get("image", {}), ViT, "model.image", ("pool_type", "num_classes"))
        check_module_fields(config.model.get("qformer", {}), QFormer, "model.qformer", DATA_DECIDED)
        check_keys(config.loss, LOSS_DEFAULTS, "loss")
        check_keys(config.evals, EVAL_KEYS, "evals")
        self.cfg = merged(LOSS_DEFAULTS, config.loss)
        if not any(float(self.cfg[k]) for k in ("itc_weight", "itm_weight", "itg_weight")):
            raise ValueError("loss.itc_weight, itm_weight and itg_weight are all 0: nothing to train")
        accum = int(config.get("grad_accum_steps", 1) or 1)
        if accum > 1:
            raise ValueError(f"BLIP-2's contrast and hard negatives couple the whole batch: grad_accum_steps must be "
                             f"1, got {accum}")
        self.data = datasets.get(config.data)

    @property
    def ids(self) -> dict[str, int]:
        return self.data.special_ids

    def model(self) -> nn.Module:
        m = self.config.model
        qformer = dict(qformer_fields(dict(m.get("qformer", {}))), vocab_size=self.ids["vocab"],
                       max_len=self.data.text_len + 1, pad_id=self.ids["pad"])
        return QFormerStage1(image=dict(m.image), qformer=qformer, embed_dim=int(m.get("embed_dim", 64)),
                             temperature_init=float(m.get("temperature_init", 1 / 0.07)),
                             cls_id=self.ids["mask"], bos_id=self.ids["bos"])

    def init_batch(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
        return {"image": self.data.image_spec(batch_size),
                "text": jax.ShapeDtypeStruct(*self.data.text_spec(batch_size))}

    def loss(self, params: Any, extra: Any, batch: dict[str, jax.Array], rng: jax.Array, train: bool = True,
             norm: Normalizers | None = None) -> LossOut:
        model, cfg = self.model(), self.cfg
        text, k_drop, k_neg = batch["text"], *jax.random.split(rng)
        apply = functools.partial(model.apply, {"params": params}, rngs={"dropout": k_drop})
        feats = apply(batch["image"], train, method="features")
        cls_text = apply(text, method="cls_text")
        zq, zt, t = apply(feats, cls_text, method="itc")
        loss_itc, metrics = itc_loss(zq, zt, t)
        # matching: the B pairs, each image with a hard negative text, each text with a hard negative image
        neg_text, neg_image = hard_negatives(k_neg, query_similarity(zq, zt), t)
        feats3 = jnp.concatenate([feats, feats, feats[neg_image]])
        text3 = jnp.concatenate([cls_text, cls_text[neg_text], cls_text])
        labels = jnp.concatenate([jnp.ones(text.shape[:1], jnp.int32), jnp.zeros(2 * text.shape[0], jnp.int32)])
        itm_logits = apply(feats3, text3, method="itm")
        loss_itm = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(itm_logits), labels[:, None], axis=1))
        itm_acc = jnp.mean((jnp.argmax(itm_logits, axis=1) == labels).astype(jnp.float32))
        logits = apply(feats, apply(text, method="dec_text"), method="itg")
        loss_itg, gen = token_cross_entropy(logits, text, text != self.ids["pad"], float(cfg["label_smoothing"]))
        total = (float(cfg["itc_weight"]) * loss_itc + float(cfg["itm_weight"]) * loss_itm
                 + float(cfg["itg_weight"]) * loss_itg)
        return total, (dict(metrics, t=t, itm_loss=loss_itm, itm_acc=jax.lax.stop_gradient(itm_acc),
                            itg_loss=loss_itg, itg_nll=gen["nll"]), extra)

    def train_data(self, batch_size: int, seed: int, process_index: int, process_count: int) -> Any:
        return self.data.train(batch_size, seed, process_index, process_count)

    @functools.cached_property
    def embedder(self) -> QueryMaxEmbedder:
        """The contrastive pass's query embeddings and [CLS] text embeddings for the evaluators."""
        model = self.model()
        image_fn = lambda p, x: model.apply({"params": p}, x, method="image_queries")  # noqa: E731
        text_fn = lambda p, t: model.apply({"params": p}, model.apply({"params": p}, t, method="cls_text"),  # noqa
                                           method="text_embedding")
        return QueryMaxEmbedder(image_fn, text_fn, self.data.tokenize,
                                batch_size=int(self.config.evals.get("batch_size", 256)),
                                context=lambda: self.trace_context())

    def build_evaluators(self) -> dict[str, Evaluator]:
        """Zero-shot classification and retrieval scored by the best query (the data's evaluators)."""
        return dict(self.data.evaluators(self.embedder, self.config.evals))
