"""A decoder-only language model on the offline text corpus (issue 32's frozen LM): next-token cross-entropy on
every target token (EOS included), held-out perplexity and greedy continuations through the KV cache."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import ml_collections

from vlm_jax.config import check_keys
from vlm_jax.config_audit import merged
from vlm_jax.data import base as datasets
from vlm_jax.evals.language_model import PerplexityEvaluator
from vlm_jax.models import TextDecoder
from vlm_jax.models.language_model import LanguageModel
from vlm_jax.objectives.captioning import DATA_DECIDED, CaptionParts
from vlm_jax.objectives.contrastive import check_module_fields
from vlm_jax.train.objective import Evaluator, LossOut, Normalizers, Objective, register

# evals: batch_size (sentences per perplexity batch), samples (held-out sentences continued greedily and printed
# at each evaluation, 0: none) from their first prompt_len tokens
EVAL_DEFAULTS = dict(batch_size=256, samples=4, prompt_len=3)


@register("lm")
class LanguageModelObjective(CaptionParts, Objective):
    """Teacher-forced next-token loss on [BOS, t0, …] → [t0, …, EOS]; no image."""

    CONFIG_DEFAULTS = {"loss": dict(label_smoothing=0.0), "evals": EVAL_DEFAULTS}

    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        check_keys(config.model, ("decoder",), "model")
        check_module_fields(config.model.get("decoder", {}), TextDecoder, "model.decoder",
                            (*DATA_DECIDED, "cross_attention", "unimodal_depth"))
        check_keys(config.loss, self.CONFIG_DEFAULTS["loss"], "loss")
        check_keys(config.evals, EVAL_DEFAULTS, "evals")
        if config.data.get("name") != "text_corpus":
            raise ValueError(f"objective 'lm' trains on data.name='text_corpus', got {config.data.get('name')!r}")
        self.data = datasets.get(config.data)
        self.evals = merged(EVAL_DEFAULTS, config.evals)

    def model(self) -> nn.Module:
        return LanguageModel(decoder=self.decoder_fields())

    def init_batch(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
        return {"text": jax.ShapeDtypeStruct(*self.data.text_spec(batch_size))}

    def loss(self, params: Any, extra: Any, batch: dict[str, jax.Array], rng: jax.Array, train: bool = True,
             norm: Normalizers | None = None) -> LossOut:
        text = batch["text"]
        logits, _ = self.model().apply({"params": params}, self.decoder_inputs(text), train=train,
                                       rngs={"dropout": rng})
        loss, metrics = self.caption_loss(logits, text, self.target_mask(batch, rng, train), norm)
        return loss, (metrics, extra)

    def build_evaluators(self) -> dict[str, Evaluator]:
        """Held-out perplexity (and continuations) on the corpus's test split."""
        ev = self.evals
        return {"lm": PerplexityEvaluator(self.model(), self.data.tokenize, self.data.decode, self.ids,
                                          self.data.held_out(), self.data.train_tokens(),
                                          batch_size=int(ev["batch_size"]),
                                          samples=int(ev["samples"]), prompt_len=int(ev["prompt_len"]),
                                          context=lambda: self.trace_context())}

    def forward_flops(self, batch: dict[str, Any], phase: int = 0) -> dict[str, float]:
        """The decoder over the batch's text positions (vocabulary logits included)."""
        from vlm_jax.scaling.compute import text_decoder

        b, length = batch["text"].shape
        return {"decoder": b * text_decoder({**self.decoder_fields(), "cross_attention": False}, length)}
