"""OTTER (Wu et al. 2022) on the two-tower trainer: CLIP's InfoNCE mixed with distillation towards soft matches
that entropic optimal transport finds among the batch's pairs, computed from an EMA teacher kept in the train state
(`losses/otter.py` for the maths)."""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from vlm_jax.losses.otter import otter_loss, otter_targets
from vlm_jax.models import TwoTower
from vlm_jax.objectives import teacher as ema_teacher
from vlm_jax.objectives.contrastive import ContrastiveObjective, Towers
from vlm_jax.train.objective import Normalizers, register

# The released OTTER recipe (facebookresearch/OTTER, launch_scripts/train_OTTER.sh and train.py): α 0.5, Sinkhorn
# ε 0.15 with 5 iterations, image–image and text–text weights 1, the diagonal removed, an EMA teacher with decay
# 0.999, and a distillation temperature of its own starting at e^3.9 and clamped at 100.
OTTER_DEFAULTS = dict(alpha=0.5, sinkhorn_eps=0.15, sinkhorn_iterations=5, image_coef=1.0, text_coef=1.0,
                      diag_penalty=100.0, ema=0.999, distill_temperature_init=math.exp(3.9),
                      distill_temperature_max=100.0)
TEACHER = ("img", "txt")  # the towers the EMA teacher copies


@register("otter")
class OTTERObjective(ContrastiveObjective):
    """InfoNCE + KL to Sinkhorn soft targets from an EMA teacher's in-batch similarities."""

    CONTRASTIVE_SMOOTHING = False
    OWN_LOSS_DEFAULTS = OTTER_DEFAULTS
    WHOLE_BATCH_INFONCE = "OTTER mixes InfoNCE with transport targets over the whole batch"

    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)

    def check_config(self, config: ml_collections.ConfigDict) -> None:
        super().check_config(config)
        if not 0.0 <= float(config.loss.get("alpha", 0.5)) <= 1.0:
            raise ValueError(f"loss.alpha is the weight of InfoNCE in [0, 1], got {config.loss.alpha}")

    def model(self) -> nn.Module:
        base = super().model()
        return TwoTower(**{f: getattr(base, f) for f in ("image", "text", "embed_dim", "temperature_init",
                                                          "bias_init", "text_tower")},
                        scales=(("t_distill", float(self.cfg["distill_temperature_init"])),))

    def init_extra(self, params: Any) -> Any:
        """The EMA teacher: copies of both towers, sharded like the student."""
        names = ema_teacher.param_names(self.model(), self.init_batch(2))
        return {"teacher": ema_teacher.init_teacher(params, names, TEACHER)}

    def after_update(self, params: Any, extra: Any) -> Any:
        """teacher ← m · teacher + (1 − m) · student after every applied update."""
        return {"teacher": ema_teacher.ema_update(extra["teacher"], params, float(self.cfg["ema"]))}

    def project(self, params: Any) -> Any:
        """CLIP's clamp of t, and the distillation temperature's at `distill_temperature_max`."""
        params = super().project(params)
        t_max = float(self.cfg["distill_temperature_max"] or 0)
        if not t_max:
            return params
        return {**params, "t_distill": jnp.minimum(params["t_distill"], jnp.log(t_max))}

    def _towers(self, params: Any, extra: Any, batch: dict[str, jax.Array], rng: jax.Array, train: bool = True,
                norm: Normalizers | None = None) -> Towers:
        """The student's embeddings and t, the teacher's embeddings (rows) and the distillation temperature."""
        model = self.model()
        (zimg, ztxt), aux = model.apply({"params": params}, batch["image"], batch["text"], train=train,
                                        rngs={"dropout": rng})
        (timg, ttxt), _ = model.apply({"params": ema_teacher.with_teacher(params, extra["teacher"])},
                                      batch["image"], batch["text"], train=False)
        return Towers(zimg, ztxt, aux["t"], aux.get("b"), jnp.zeros((), jnp.float32), {}, extra,
                      rows={"teacher_img": timg, "teacher_txt": ttxt}, shared={"t_distill": aux["t_distill"]})

    def _contrastive(self, zimg: jax.Array, ztxt: jax.Array, t: jax.Array, b: jax.Array | None,
                     labels: jax.Array | None = None, rows: dict[str, jax.Array] | None = None,
                     shared: dict[str, jax.Array] | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Transport targets over the whole (global) batch from the teacher's embeddings, then `otter_loss`."""
        cfg = self.cfg
        i2t, t2i = otter_targets(rows["teacher_img"], rows["teacher_txt"], eps=float(cfg["sinkhorn_eps"]),
                                 iterations=int(cfg["sinkhorn_iterations"]), image_coef=float(cfg["image_coef"]),
                                 text_coef=float(cfg["text_coef"]), diag_penalty=float(cfg["diag_penalty"]))
        loss, metrics = otter_loss(zimg, ztxt, t, shared["t_distill"], i2t, t2i, float(cfg["alpha"]))
        return loss, dict(metrics, t=t)

    def forward_flops(self, batch: dict[str, Any], phase: int = 0) -> dict[str, float]:
        """The student's towers and similarity, and the teacher's forward (towers and its three similarity matrices,
        no backward)."""
        from vlm_jax.scaling.compute import dense, model_forward

        out = model_forward(self.model(), batch)
        bsz, d = jax.tree.leaves(batch["image"])[0].shape[0], int(self.config.model.embed_dim)
        teacher = sum(v for k, v in out.items() if k != "similarity")
        out["forward_only"] = out.get("forward_only", 0.0) + teacher + 3 * dense(bsz, d, bsz)
        out["similarity"] = 2 * out["similarity"]  # the student's InfoNCE logits and its distillation logits
        return out
