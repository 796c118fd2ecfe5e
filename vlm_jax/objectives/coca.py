"""CoCa (Yu et al. 2022): contrastive image–text embeddings and captioning from one encoder–decoder."""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import ml_collections

from vlm_jax.config import check_keys
from vlm_jax.evals.embedder import Embedder
from vlm_jax.models import TextDecoder
from vlm_jax.evals.standard import SUITE_DEFAULTS
from vlm_jax.objectives.captioning import EVAL_DEFAULTS, CaptionParts, evals_config
from vlm_jax.objectives.contrastive import ContrastiveObjective, Towers
from vlm_jax.train.objective import Evaluator, Normalizers, register

LOSS_DEFAULTS = dict(name="infonce", impl="full", chunk_size=0, temperature_max=100.0,
                     contrastive_weight=1.0, caption_weight=2.0, label_smoothing=0.0)


@register("coca")
class CoCaObjective(CaptionParts, ContrastiveObjective):
    """loss = contrastive_weight · contrastive(zimg, ztxt) + caption_weight · captioning (paper: 1.0 and 2.0).

    The image embedding is a one-query attention pool of the ViT tokens; the text embedding is the output of a
    CLS token appended to the decoder's unimodal (no cross-attention) lower blocks; the upper blocks cross-attend
    to `cap_queries` pooled image tokens and predict the caption. The contrastive term is the two-tower loss
    (`loss.name`, `loss.impl` = full | gather | ring; GradCache under `grad_accum_steps`), so every kernel applies unchanged.
    """

    NAFLEX = True  # the decoder's cross-attention and both poolers mask NaFlex padding

    # CoCa's zero-shot evaluator also reads `languages` (the class-name languages of the multilingual sets)
    # and, with its two towers, the standard benchmark suite (SUITE_DEFAULTS)
    CONFIG_DEFAULTS = {"loss": LOSS_DEFAULTS, "evals": {**EVAL_DEFAULTS, **SUITE_DEFAULTS, "languages": []}}
    MODEL_KEYS = ("image", "decoder", "cap_queries", "embed_dim", "temperature_init", "bias_init")
    contrastive_heads = True

    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        self.check_data_and_evals(config)

    def check_config(self, config: ml_collections.ConfigDict) -> None:
        """Unknown model / decoder / loss keys raise, naming the valid ones; the decoder must have unimodal blocks
        below (the text embedding reads the CLS token there) and multimodal blocks above (captioning reads the
        image there): 0 < model.decoder.unimodal_depth < model.decoder.depth."""
        self.check_caption_model(config, self.MODEL_KEYS)
        check_keys(config.loss, LOSS_DEFAULTS, "loss")
        if not int(config.model.get("embed_dim", 0) or 0):
            raise ValueError("CoCa needs model.embed_dim > 0 (the contrastive embedding)")
        decoder = config.model.get("decoder", {})
        depth = int(decoder.get("depth", TextDecoder.depth))
        unimodal = int(decoder.get("unimodal_depth", TextDecoder.unimodal_depth))
        if not 0 < unimodal < depth:
            raise ValueError(f"CoCa needs 0 < model.decoder.unimodal_depth < model.decoder.depth, got unimodal_depth="
                             f"{unimodal}, depth={depth}: with 0 no block runs before the text embedding's CLS token "
                             "is read (a constant embedding); with depth no block reads the image when captioning")

    def model(self) -> nn.Module:
        return self.caption_model()

    def _towers(self, params: Any, extra: Any, batch: dict[str, jax.Array], rng: jax.Array, train: bool = True,
                norm: Normalizers | None = None) -> Towers:
        """Embeddings, t, b, and caption_weight × the mean token cross-entropy (over `norm`'s token count inside an
        accumulated step)."""
        text = batch["text"]
        (zimg, ztxt, logits), aux = self.model().apply(
            {"params": params}, batch["image"], self.decoder_inputs(text), train=train, rngs={"dropout": rng})
        ce, metrics = self.caption_loss(logits, text, self.target_mask(batch, rng, train), norm)
        local = float(self.config.loss.get("caption_weight", 2.0)) * ce
        return Towers(zimg, ztxt, aux["t"], aux.get("b"), local,
                      dict(caption_loss=metrics["nll"], token_accuracy=metrics["token_accuracy"],
                           tokens=metrics["tokens"]), extra)

    @functools.cached_property
    def embedder(self) -> Embedder:
        """Image embedding (attention pool) and text embedding (decoder CLS) for the zero-shot evaluator."""
        model = self.model()
        image_fn = lambda p, x: model.apply({"params": p}, x, method="encode")[1]  # noqa: E731
        text_fn = lambda p, t: model.apply({"params": p}, self.decoder_inputs(t), method="embed_text")  # noqa: E731
        return Embedder(image_fn, text_fn, self.data.tokenize, batch_size=evals_config(self.config, self.eval_defaults)["batch_size"],
                        context=lambda: self.trace_context())

    def build_evaluators(self) -> dict[str, Evaluator]:
        ev = evals_config(self.config, self.eval_defaults)
        zeroshot = self.data.evaluators(self.embedder, ml_collections.ConfigDict(
            dict(sets=ev["sets"], templates=ev["templates"], languages=ev["languages"])))
        return {**zeroshot, **self.caption_evaluators()}
