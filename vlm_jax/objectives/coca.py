"""CoCa (Yu et al. 2022): contrastive image–text embeddings and captioning from one encoder–decoder."""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from vlm_jax.config import check_keys
from vlm_jax.data import image_text as datasets
from vlm_jax.evals.embedder import Embedder
from vlm_jax.objectives.captioning import CaptionParts, evals_config
from vlm_jax.objectives.contrastive import ContrastiveObjective, contrastive_loss_fn
from vlm_jax.train.objective import Evaluator, Objective, register

LOSS_DEFAULTS = dict(name="infonce", impl="full", chunk_size=0, grad_cache=0, temperature_max=100.0,
                     contrastive_weight=1.0, caption_weight=2.0, label_smoothing=0.0)


@register("coca")
class CoCaObjective(CaptionParts, ContrastiveObjective):
    """loss = contrastive_weight · contrastive(zimg, ztxt) + caption_weight · captioning (paper: 1.0 and 2.0).

    The image embedding is a one-query attention pool of the ViT tokens; the text embedding is the output of a
    CLS token appended to the decoder's unimodal (no cross-attention) lower blocks; the upper blocks cross-attend
    to `cap_queries` pooled image tokens and predict the caption. The contrastive term is the two-tower loss
    (`loss.name`, `loss.impl` = full | gather | ring, `loss.grad_cache`), so every kernel applies unchanged.
    """

    CONFIG_DEFAULTS = {"loss": LOSS_DEFAULTS}
    MODEL_KEYS = ("image", "decoder", "cap_queries", "embed_dim", "temperature_init", "bias_init")
    contrastive_heads = True

    def __init__(self, config: ml_collections.ConfigDict):
        Objective.__init__(self, config)  # ContrastiveObjective's own __init__ checks two-tower keys
        self.check_config(config)
        self.loss_fn = contrastive_loss_fn(config.loss)
        self.data = datasets.get(config.data)
        evals_config(config)

    def check_config(self, config: ml_collections.ConfigDict) -> None:
        """Unknown model / decoder / loss keys raise, naming the valid ones."""
        self.check_caption_model(config, self.MODEL_KEYS)
        check_keys(config.loss, LOSS_DEFAULTS, "loss")
        if not int(config.model.get("embed_dim", 0) or 0):
            raise ValueError("CoCa needs model.embed_dim > 0 (the contrastive embedding)")

    def model(self) -> nn.Module:
        return self.caption_model()

    def local_denominator(self, batch: dict[str, jax.Array]) -> jax.Array:
        """Target tokens of the whole batch: the captioning loss is their mean."""
        return jnp.maximum(jnp.sum(batch["text"] != self.ids["pad"]), 1).astype(jnp.float32)

    def _towers(self, params: Any, batch: dict[str, jax.Array], rng: jax.Array, train: bool = True,
                denominator: jax.Array | None = None) -> tuple[Any, ...]:
        """Embeddings, t, b, and caption_weight × this batch's share of the mean token cross-entropy."""
        text = batch["text"]
        (zimg, ztxt, logits), aux = self.model().apply(
            {"params": params}, batch["image"], self.decoder_inputs(text), train=train, rngs={"dropout": rng})
        ce, metrics = self.caption_loss(logits, text)
        if denominator is not None:  # a sub-batch (GradCache): its tokens' share of the full batch's mean
            ce = ce * metrics["tokens"] / denominator
        local = float(self.config.loss.get("caption_weight", 2.0)) * ce
        return zimg, ztxt, aux["t"], aux.get("b"), local, dict(caption_loss=metrics["nll"],
                                                               token_accuracy=metrics["token_accuracy"])

    @functools.cached_property
    def embedder(self) -> Embedder:
        """Image embedding (attention pool) and text embedding (decoder CLS) for the zero-shot evaluator."""
        model = self.model()
        image_fn = lambda p, x: model.apply({"params": p}, x, method="encode")[1]  # noqa: E731
        text_fn = lambda p, t: model.apply({"params": p}, self.decoder_inputs(t), method="embed_text")  # noqa: E731
        return Embedder(image_fn, text_fn, self.data.tokenize, batch_size=evals_config(self.config)["batch_size"],
                        context=lambda: self.trace_context())

    @functools.cached_property
    def _evaluators(self) -> dict[str, Evaluator]:
        ev = evals_config(self.config)
        zeroshot = self.data.evaluators(self.embedder, ml_collections.ConfigDict(
            dict(sets=ev["sets"], templates=ev["templates"], languages=ev["languages"])))
        return {**zeroshot, **self.caption_evaluators()}
