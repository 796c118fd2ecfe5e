"""PrefixLM (SimVLM, Wang et al. 2022) on a decoder-only image prefix-LM: per example a random split point in
the caption; the image and the text before it attend bidirectionally, the rest causally; loss on the rest only."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from vlm_jax.config import check_keys
from vlm_jax.data import image_text as datasets
from vlm_jax.models.prefix_lm import ImagePrefixLM
from vlm_jax.objectives.captioning import EVAL_DEFAULTS, CaptionParts, evals_config
from vlm_jax.train.objective import Normalizers, Evaluator, LossOut, Objective, register


@register("prefixlm")
class PrefixLMObjective(CaptionParts, Objective):
    """Prefix length s ~ uniform over 0 … len−1 caption tokens (len: caption tokens with EOS); decoder inputs
    [BOS, t0, …] with BOS and t0 … t_{s−1} in the bidirectional prefix beside the image; loss on every target after
    the prefix, t_s … EOS (SimVLM). s = 0 is plain captioning, which is how the model generates and scores at
    evaluation."""

    CONFIG_DEFAULTS = {"loss": dict(label_smoothing=0.0), "evals": EVAL_DEFAULTS}
    MODEL_KEYS = ("image", "decoder")
    NAFLEX = True  # the image prefix's padding is hidden from every position, teacher-forced and decoding

    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        self.check_caption_model(config, self.MODEL_KEYS)
        check_keys(config.loss, self.CONFIG_DEFAULTS["loss"], "loss")
        self.data = datasets.get(config.data)
        self.check_data_and_evals(config)

    def model(self) -> nn.Module:
        return ImagePrefixLM(image=dict(self.config.model.image), decoder=self.decoder_fields())

    def split_points(self, text: jax.Array, rng: jax.Array, train: bool) -> jax.Array:
        """int32 [B]: caption tokens in the prefix; uniform over 0 … len−1 in training (at least one target is
        left), 0 at evaluation."""
        if not train:
            return jnp.zeros(text.shape[:1], jnp.int32)
        length = jnp.sum(text != self.ids["pad"], axis=-1)
        u = jax.random.uniform(jax.random.fold_in(rng, 2), text.shape[:1])
        return jnp.minimum(jnp.floor(u * length), jnp.maximum(length - 1, 0)).astype(jnp.int32)

    def target_mask(self, batch: dict[str, jax.Array], rng: jax.Array, train: bool) -> jax.Array:
        """bool [B, L]: every caption token after the prefix (t_s … EOS for a prefix of s tokens), no padding."""
        text = batch["text"]
        split = self.split_points(text, rng, train)
        return (text != self.ids["pad"]) & (jnp.arange(text.shape[1])[None, :] >= split[:, None])

    def loss(self, params: Any, extra: Any, batch: dict[str, jax.Array], rng: jax.Array, train: bool = True,
             norm: Normalizers | None = None) -> LossOut:
        text = batch["text"]
        split = self.split_points(text, rng, train)
        # decoder inputs [BOS, t0, …]: a prefix of s caption tokens spans input positions 0 … s (BOS, t0 … t_{s−1});
        # position s predicts t_s, the first token after the prefix. s = 0 is plain captioning.
        prefix_len = jnp.where(split > 0, split + 1, 0)
        (_, _, logits), _ = self.model().apply({"params": params}, batch["image"], self.decoder_inputs(text),
                                               train=train, prefix_len=prefix_len, rngs={"dropout": rng})
        loss, metrics = self.caption_loss(logits, text, self.target_mask(batch, rng, train), norm)
        return loss, (dict(metrics, prefix_length=jnp.mean(split.astype(jnp.float32))), extra)

    def build_evaluators(self) -> dict[str, Evaluator]:
        return self.caption_evaluators()
