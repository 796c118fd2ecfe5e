"""Prompted multi-task image-to-text (PaLI, Chen et al. 2023; PaliGemma's decoder-only layout): the model reads an
image and a task prompt and writes the answer; the loss covers the answer tokens only.

`model.layout`: "encdec" — PaLI: ViT tokens + prompt through a bidirectional encoder, a decoder cross-attends to
it (`models.pali.PaLI`); "decoder" — one stack where image tokens and the prompt attend bidirectionally and the
answer causally (`models.prefix_lm.ImagePrefixLM` with a prompt). Data: a prompted dataset such as "multitask".
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import ml_collections

from vlm_jax.config import check_keys
from vlm_jax.data import image_text as datasets
from vlm_jax.models import layers
from vlm_jax.models.pali import PaLI
from vlm_jax.models.prefix_lm import ImagePrefixLM
from vlm_jax.objectives.captioning import PROMPT_EVAL_DEFAULTS, CaptionParts, evals_config
from vlm_jax.objectives.contrastive import check_module_fields
from vlm_jax.train.objective import Normalizers, Evaluator, LossOut, Objective, register

LAYOUTS = ("encdec", "decoder")


@register("pali")
class PaLIObjective(CaptionParts, Objective):
    """Answer-token cross-entropy given image + prompt; per-task evaluation of generated answers."""

    CONFIG_DEFAULTS = {"loss": dict(label_smoothing=0.0), "evals": PROMPT_EVAL_DEFAULTS}
    READS_PROMPTS = True
    MODEL_KEYS = ("layout", "image", "encoder", "decoder")
    NAFLEX = True  # the encoder and cross-attention (encdec) or the prefix's self-attention mask NaFlex padding

    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        self.check_caption_model(config, self.MODEL_KEYS)
        layout = config.model.get("layout", "encdec")
        if layout not in LAYOUTS:
            raise ValueError(f"model.layout must be one of {LAYOUTS}, got {layout!r}")
        if layout == "encdec":
            encoder = {k: v for k, v in dict(config.model.get("encoder", {})).items()
                       if k not in ("width", "residual_dtype")}
            check_module_fields(encoder, layers.Encoder, "model.encoder")
        elif config.model.get("encoder"):
            raise ValueError("model.encoder is for layout 'encdec'; the 'decoder' layout has one stack")
        check_keys(config.loss, self.CONFIG_DEFAULTS["loss"], "loss")
        self.data = datasets.get(config.data)
        if not self.prompted:
            raise ValueError(f"objective 'pali' needs prompted data (data.name='multitask', or 'synthetic' with "
                             f"prompt_len > 0), got {config.data.get('name', 'emoji')!r}")
        self.check_data_and_evals(config)

    def model(self) -> nn.Module:
        m = self.config.model
        decoder = self.decoder_fields()
        if m.get("layout", "encdec") == "decoder":  # the prompt sits before the answer in the one stack
            return ImagePrefixLM(image=dict(m.image), decoder=dict(decoder, max_len=self.data.prompt_len
                                                                   + self.data.text_len))
        return PaLI(image=dict(m.image), encoder=dict(m.get("encoder", {})), decoder=decoder,
                    prompt_len=self.data.prompt_len)

    def loss(self, params: Any, extra: Any, batch: dict[str, jax.Array], rng: jax.Array, train: bool = True,
             norm: Normalizers | None = None) -> LossOut:
        text = batch["text"]
        (_, _, logits), _ = self.model().apply({"params": params}, batch["image"], self.decoder_inputs(text),
                                               prompt=batch["prompt"], train=train, rngs={"dropout": rng})
        loss, metrics = self.caption_loss(logits, text, self.target_mask(batch, rng, train), norm)
        return loss, (metrics, extra)

    def build_evaluators(self) -> dict[str, Evaluator]:
        return self.task_evaluators()
