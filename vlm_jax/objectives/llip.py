"""Llip (Lavoie et al. 2024) on the two-tower trainer: the image tower outputs K mixture tokens
(`TwoTower.mixture_tokens`), every caption pools them through a one-query cross-attention, and the loss (SigLIP's,
as in the paper, or InfoNCE) scores each image pooled by each caption (`losses/llip.py`). Zero-shot classification
and retrieval pool the same way (`MixtureEmbedder`); the image-only probes read the mean of the mixture tokens."""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from vlm_jax.evals.embedder import MixtureEmbedder
from vlm_jax.losses.llip import llip_loss
from vlm_jax.models import TwoTower
from vlm_jax.objectives.contrastive import ContrastiveObjective, Towers
from vlm_jax.train.objective import Normalizers, register

# mixture_temperature: τ of the pooling softmax over the K mixture tokens (the paper ablates it; 5 as I read it)
LLIP_DEFAULTS = dict(mixture_temperature=5.0)


@register("llip")
class LlipObjective(ContrastiveObjective):
    """Sigmoid (or InfoNCE) loss on caption-conditioned pooled image embeddings."""

    CONTRASTIVE_SMOOTHING = False
    OWN_LOSS_DEFAULTS = LLIP_DEFAULTS
    OWN_MODEL_KEYS = ("mixture_tokens",)

    def check_config(self, config: ml_collections.ConfigDict) -> None:
        super().check_config(config)
        name, impl = config.loss.get("name", "infonce"), config.loss.get("impl", "full")
        if name not in ("sigmoid", "infonce") or impl != "full" or config.loss.get("chunk_size", 0):
            raise ValueError(f"Llip pools every image by every caption of the batch: loss.name must be 'sigmoid' or "
                             f"'infonce' and loss.impl 'full' with no chunk_size, got name={name!r}, impl={impl!r}")
        if int(config.model.get("mixture_tokens", 0) or 0) < 1:
            raise ValueError(f"Llip needs model.mixture_tokens >= 1, got {config.model.get('mixture_tokens')}")
        if float(self.cfg["mixture_temperature"]) <= 0:
            raise ValueError(f"loss.mixture_temperature must be > 0, got {self.cfg['mixture_temperature']}")
        if config.get("evals", {}).get("suite"):
            raise ValueError("Llip scores an image pooled by each caption; the standard suite compares single "
                             "embeddings: leave evals.suite empty")

    @property
    def tau(self) -> float:
        return float(self.cfg["mixture_temperature"])

    def model(self) -> nn.Module:
        base = super().model()
        return TwoTower(**{f: getattr(base, f) for f in ("image", "text", "embed_dim", "temperature_init",
                                                          "bias_init", "text_tower")},
                        mixture_tokens=int(self.config.model.mixture_tokens))

    def _towers(self, params: Any, extra: Any, batch: dict[str, jax.Array], rng: jax.Array, train: bool = True,
                norm: Normalizers | None = None) -> Towers:
        """The caption-free embeddings (logged) and the mixture's keys / values and the captions' queries (rows)."""
        (zimg, ztxt), aux = self.model().apply({"params": params}, batch["image"], batch["text"], train=train,
                                               rngs={"dropout": rng})
        return Towers(zimg, ztxt, aux["t"], aux.get("b"), jnp.zeros((), jnp.float32), {}, extra,
                      rows={"keys": aux["img/mixture_keys"], "values": aux["img/mixture_values"],
                            "query": aux["txt/mixture_query"]})

    def _contrastive(self, zimg: jax.Array, ztxt: jax.Array, t: jax.Array, b: jax.Array | None,
                     labels: jax.Array | None = None, rows: dict[str, jax.Array] | None = None,
                     shared: dict[str, jax.Array] | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Llip's loss over the whole batch (`losses.llip.llip_loss`)."""
        loss, metrics = llip_loss(rows["keys"], rows["values"], rows["query"], ztxt, t, b, self.tau,
                                  self.config.loss.get("name", "infonce"))
        return loss, dict(metrics, t=t, **({} if b is None else {"b": b}))

    @functools.cached_property
    def embedder(self) -> MixtureEmbedder:
        """Images as their mixture keys and values, texts as unit embedding and query, for the evaluators."""
        model = self.model()

        def image_fn(p: Any, x: Any) -> jax.Array:
            aux = model.apply({"params": p}, x, None)[1]
            return jnp.concatenate([aux["img/mixture_keys"], aux["img/mixture_values"]], axis=-1)

        def text_fn(p: Any, tokens: jax.Array) -> jax.Array:
            (_, ztxt), aux = model.apply({"params": p}, None, tokens)
            return jnp.concatenate([ztxt, aux["txt/mixture_query"]], axis=-1)

        return MixtureEmbedder(image_fn, text_fn, self.data.tokenize, tau=self.tau,
                               batch_size=self.config.evals.get("batch_size", 256),
                               context=lambda: self.trace_context())

    def image_features(self, params: Any, image: jax.Array) -> jax.Array:
        """The mean of the mixture tokens before the projection head (the probes' input)."""
        return jnp.mean(self.model().apply({"params": params}, image, None)[1]["img/pre_logits"], axis=1)
