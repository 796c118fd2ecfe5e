"""NLIP's noise harmonisation on the two-tower trainer (`losses/nlip.py`): the train state keeps every training
pair's loss history (an EMA over its visits, indexed by the data's example ids), a Gaussian mixture fitted to it
gives each pair a noise probability, and InfoNCE weighs pairs by 1 − that probability after a warmup. The caption
generator NLIP also uses to complete noisy captions ("noise completion") is not part of this objective."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from vlm_jax.losses.nlip import gmm_noise_probability, weighted_infonce
from vlm_jax.objectives.contrastive import ContrastiveObjective
from vlm_jax.train.objective import LossOut, Normalizers, register

# history_momentum: each visit moves a pair's history by (1 − m) towards its current loss (the first visit sets it);
# gmm_iterations: EM steps per train step; warmup: the share of training with every weight 1 (the history fills)
NLIP_DEFAULTS = dict(history_momentum=0.5, gmm_iterations=10, warmup=0.2)


@register("nlip")
class NLIPObjective(ContrastiveObjective):
    """InfoNCE with per-pair weights 1 − p(noisy | loss history)."""

    CONTRASTIVE_SMOOTHING = False
    OWN_LOSS_DEFAULTS = NLIP_DEFAULTS
    WHOLE_BATCH_INFONCE = "NLIP weighs the pairs of one InfoNCE over the whole batch"
    WHOLE_BATCH_STEP = "NLIP weighs pairs inside one InfoNCE over the whole batch and updates their history from it"

    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        if not getattr(self.data, "example_ids", False):
            raise ValueError("NLIP keeps a loss history per training pair: set data.example_ids=True (emoji data)")
        self.num_examples = int(self.data.num_train_examples())
        self.start = int(round(float(self.cfg["warmup"]) * int(config.get("total_steps", 0))))

    def init_extra(self, params: Any) -> Any:
        """Every pair's loss history, whether it was visited, and the count of applied updates."""
        n = self.num_examples
        return {"history": jnp.zeros((n,), jnp.float32), "seen": jnp.zeros((n,), bool),
                "updates": jnp.zeros((), jnp.int32)}

    def after_update(self, params: Any, extra: Any) -> Any:
        return dict(extra, updates=extra["updates"] + 1)

    def weights(self, extra: Any, ids: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(weights [B], noise probabilities [B]) of the batch's pairs from the history; all 1 during warmup."""
        noise = gmm_noise_probability(extra["history"], extra["seen"], int(self.cfg["gmm_iterations"]))[ids]
        active = extra["updates"] >= self.start
        return jnp.where(active, 1.0 - noise, 1.0), noise

    def loss(self, params: Any, extra: Any, batch: dict[str, jax.Array], rng: jax.Array, train: bool = True,
             norm: Normalizers | None = None) -> LossOut:
        zimg, ztxt, t, _ = self._embed(params, batch["image"], batch["text"], rng, train)
        # the data's example ids (refused at construction when the data has none); batches traced from `init_batch`
        # shapes alone (FLOP counts, dry runs) carry none, and read pair 0's history in their place
        ids = batch.get("example")
        if ids is None:
            ids = jnp.zeros(zimg.shape[:1], jnp.int32)
        w, noise = self.weights(extra, ids)
        loss, per_pair, metrics = weighted_infonce(zimg, ztxt, t, w)
        metrics = dict(metrics, t=t, weight_mean=jnp.mean(w), noise_probability_mean=jnp.mean(noise),
                       history_seen=jnp.mean(extra["seen"].astype(jnp.float32)))
        if not train:
            return loss, (metrics, extra)
        m = float(self.cfg["history_momentum"])
        current = jax.lax.stop_gradient(per_pair)
        old, seen = extra["history"][ids], extra["seen"][ids]
        new = jnp.where(seen, m * old + (1.0 - m) * current, current)
        extra = dict(extra, history=extra["history"].at[ids].set(new), seen=extra["seen"].at[ids].set(True))
        return loss, (metrics, extra)
