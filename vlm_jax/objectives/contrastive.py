"""CLIP (InfoNCE) and SigLIP (sigmoid) two-tower objectives on image–text pairs."""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from vlm_jax.config import check_keys
from vlm_jax.evals.embedder import Embedder
from vlm_jax.losses import get_contrastive_loss
from vlm_jax.models import TextTransformer, TwoTower, ViT
from vlm_jax.data import image_text as datasets
from vlm_jax.train.objective import Evaluator, LossOut, Objective, register

MODEL_KEYS = ("image", "text", "embed_dim", "temperature_init", "bias_init")
LOSS_KEYS = ("name",)


def _check_module_fields(section: Any, module: type, prefix: str) -> None:
    """Raises on keys that are not fields of the Flax module, naming the valid ones."""
    fields = tuple(f.name for f in dataclasses.fields(module) if f.name not in ("parent", "name"))
    check_keys(dict(section), fields, prefix)


@register("contrastive")
class ContrastiveObjective(Objective):
    """Two towers + a contrastive loss (`config.loss.name`: infonce | sigmoid)."""

    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        check_keys(config.model, MODEL_KEYS, "model")
        check_keys(config.loss, LOSS_KEYS, "loss")
        _check_module_fields(config.model.get("image", {}), ViT, "model.image")
        _check_module_fields(config.model.get("text", {}), TextTransformer, "model.text")
        self.loss_fn = get_contrastive_loss(config.loss.get("name", "infonce"))
        self.data = datasets.get(config.data)

    def model(self) -> nn.Module:
        m = self.config.model
        text = dict(m.text)
        if not text.get("vocab_size"):
            text["vocab_size"] = self.data.vocab_size  # 0 → the dataset tokenizer's vocabulary
        return TwoTower(image=dict(m.image), text=text, embed_dim=m.embed_dim,
                        temperature_init=m.get("temperature_init", 10.0), bias_init=m.get("bias_init", None))

    def init_batch(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
        s, l = self.data.image_size, self.data.text_len
        return {"image": jax.ShapeDtypeStruct((batch_size, s, s, 3), jnp.float32),
                "text": jax.ShapeDtypeStruct((batch_size, l), jnp.int32)}

    def loss(self, params: Any, extra: Any, batch: dict[str, jax.Array], rng: jax.Array,
             train: bool = True) -> LossOut:
        (zimg, ztxt), aux = self.model().apply({"params": params}, batch["image"], batch["text"],
                                               train=train, rngs={"dropout": rng})
        args = (zimg, ztxt, aux["t"]) + ((aux["b"],) if "b" in aux else ())
        loss, metrics = self.loss_fn(*args)
        metrics = dict(metrics, t=aux["t"], **({"b": aux["b"]} if "b" in aux else {}))
        return loss, (metrics, extra)

    def train_data(self, batch_size: int, seed: int, process_index: int, process_count: int) -> Any:
        return self.data.train(batch_size, seed, process_index, process_count)

    @functools.cached_property
    def embedder(self) -> Embedder:
        """Jitted single-tower embedding functions for the evaluators."""
        model = self.model()
        image_fn = lambda p, x: model.apply({"params": p}, x, None)[0][0]  # noqa: E731
        text_fn = lambda p, t: model.apply({"params": p}, None, t)[0][1]  # noqa: E731
        return Embedder(image_fn, text_fn, self.data.tokenize, batch_size=self.config.evals.get("batch_size", 256))

    @functools.cached_property
    def _evaluators(self) -> dict[str, Evaluator]:
        return self.data.evaluators(self.embedder, self.config.evals)

    def evaluators(self) -> dict[str, Evaluator]:
        return self._evaluators
