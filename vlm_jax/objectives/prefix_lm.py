"""PrefixLM (SimVLM, Wang et al. 2022) on a decoder-only image prefix-LM: per example a random split point in
the caption; the image and the text before it attend bidirectionally, the rest causally; loss on the rest only."""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from vlm_jax.config import check_keys
from vlm_jax.data import image_text as datasets
from vlm_jax.losses.generative import token_cross_entropy
from vlm_jax.models.prefix_lm import ImagePrefixLM
from vlm_jax.objectives.captioning import CaptionParts, evals_config
from vlm_jax.train.objective import Evaluator, LossOut, Objective, register


@register("prefixlm")
class PrefixLMObjective(CaptionParts, Objective):
    """Split point n ~ uniform over 0 … len−1 (len: caption tokens with EOS); decoder inputs [BOS, t0, …] with
    the first n input positions (BOS, t0 … t_{n−2}) in the bidirectional prefix beside the image; loss on the
    targets t_n …. n = 0 is plain captioning, which is how the model generates and scores at evaluation."""

    CONFIG_DEFAULTS = {"loss": dict(label_smoothing=0.0)}
    MODEL_KEYS = ("image", "decoder")

    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        self.check_caption_model(config, self.MODEL_KEYS)
        check_keys(config.loss, self.CONFIG_DEFAULTS["loss"], "loss")
        self.data = datasets.get(config.data)
        evals_config(config)

    def model(self) -> nn.Module:
        return ImagePrefixLM(image=dict(self.config.model.image), decoder=self.decoder_fields())

    def split_points(self, text: jax.Array, rng: jax.Array, train: bool) -> jax.Array:
        """int32 [B]: text positions in the prefix; uniform over 0 … len−1 in training, 0 at evaluation."""
        if not train:
            return jnp.zeros(text.shape[:1], jnp.int32)
        length = jnp.sum(text != self.ids["pad"], axis=-1)
        u = jax.random.uniform(jax.random.fold_in(rng, 2), text.shape[:1])
        return jnp.minimum(jnp.floor(u * length), jnp.maximum(length - 1, 0)).astype(jnp.int32)

    def suffix_mask(self, text: jax.Array, split: jax.Array) -> jax.Array:
        """bool [B, L]: the targets the loss covers (at or after the split, not padding)."""
        return (text != self.ids["pad"]) & (jnp.arange(text.shape[1])[None, :] >= split[:, None])

    def loss(self, params: Any, extra: Any, batch: dict[str, jax.Array], rng: jax.Array,
             train: bool = True) -> LossOut:
        text = batch["text"]
        split = self.split_points(text, rng, train)
        (_, _, logits), _ = self.model().apply({"params": params}, batch["image"], self.decoder_inputs(text),
                                               train=train, prefix_len=split, rngs={"dropout": rng})
        loss, metrics = token_cross_entropy(logits, text, self.suffix_mask(text, split),
                                            float(self.config.loss.get("label_smoothing", 0.0)))
        return loss, (dict(metrics, prefix_tokens=jnp.mean(split.astype(jnp.float32))), extra)

    def evaluators(self) -> dict[str, Evaluator]:
        return self._evaluators

    @functools.cached_property
    def _evaluators(self) -> dict[str, Evaluator]:
        return self.caption_evaluators()
