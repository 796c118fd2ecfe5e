"""KELIP (Ko & Gu 2022) on the two-tower trainer: bilingual captions (the data's `languages`, e.g. English and
Korean CLDR names, drawn per example) and multi-crop augmentation: besides the augmented image, `local_crops` random
crops of `crop_fraction` of its side, seen at `local_size` of the input resolution (the learned position table
resampled), each contrasted with the captions; the loss is the mean over the views. Under GradCache each
micro-batch draws its own crop positions (the same distribution, other draws than one big batch would make)."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from vlm_jax.models.siglip2 import image_params_at
from vlm_jax.models.vit import ViT
from vlm_jax.objectives.contrastive import ContrastiveObjective, Towers
from vlm_jax.objectives.views import local_geometry, random_crops
from vlm_jax.train.objective import Normalizers, register

# local_crops views per image besides the global one; crop_fraction: a crop's side over the image's; local_size: the
# views' side over the input's (0.5 of 32 px: 16 px, 2 × 2 patches of 8)
KELIP_DEFAULTS = dict(local_crops=2, crop_fraction=0.5, local_size=0.5)


@register("kelip")
class KELIPObjective(ContrastiveObjective):
    """The configured contrastive loss averaged over the global view and the local crops."""

    NAFLEX = False  # crops are cut from square pixel images
    OWN_LOSS_DEFAULTS = KELIP_DEFAULTS

    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        if int(self.cfg["local_crops"]) < 0 or not 0.0 < float(self.cfg["crop_fraction"]) <= 1.0:
            raise ValueError(f"loss.local_crops must be >= 0 and loss.crop_fraction in (0, 1], got "
                             f"{self.cfg['local_crops']}, {self.cfg['crop_fraction']}")
        patch = tuple(ViT(**dict(config.model.image))._cfg()["patch_size"])
        self.grid, self.local_side, self.local_grid = local_geometry(self.data.image_size, patch,
                                                                     self.cfg["local_size"])

    def _towers(self, params: Any, extra: Any, batch: dict[str, jax.Array], rng: jax.Array, train: bool = True,
                norm: Normalizers | None = None) -> Towers:
        """Both towers on the batch, and the unit embeddings of each image's local crops (rows [B, V, D])."""
        model = self.model()
        (zimg, ztxt), aux = model.apply({"params": params}, batch["image"], batch["text"], train=train,
                                        rngs={"dropout": rng})
        rows = {}
        n = int(self.cfg["local_crops"])
        if n:
            local_params = image_params_at(params, self.grid, self.local_grid)
            views = []
            for i in range(n):
                crops = random_crops(jax.random.fold_in(rng, 100 + i), batch["image"], float(self.cfg["crop_fraction"]),
                                     self.local_side)
                (z, _), _ = model.apply({"params": local_params}, crops, None, train=train,
                                        rngs={"dropout": jax.random.fold_in(rng, 200 + i)})
                views.append(z)
            rows["local_img"] = jnp.stack(views, axis=1)
        return Towers(zimg, ztxt, aux["t"], aux.get("b"), jnp.zeros((), jnp.float32), {}, extra, rows=rows)

    def _contrastive(self, zimg: jax.Array, ztxt: jax.Array, t: jax.Array, b: jax.Array | None,
                     labels: jax.Array | None = None, rows: dict[str, jax.Array] | None = None,
                     shared: dict[str, jax.Array] | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
        """The mean of the contrastive loss over the views; metrics of the global view plus `local_loss`."""
        loss, metrics = super()._contrastive(zimg, ztxt, t, b, labels)
        local = rows.get("local_img") if rows else None
        if local is None:
            return loss, metrics
        parts = [super(KELIPObjective, self)._contrastive(local[:, v], ztxt, t, b, labels)[0]
                 for v in range(local.shape[1])]
        local_loss = sum(parts) / len(parts)
        return (loss + sum(parts)) / (1 + len(parts)), dict(metrics, global_loss=loss, local_loss=local_loss)

    def forward_flops(self, batch: dict[str, Any], phase: int = 0) -> dict[str, float]:
        """The model on the batch, and each local crop through the image tower and the similarity."""
        from vlm_jax.scaling import compute as fl

        out = super().forward_flops(batch, phase)
        n = int(self.cfg["local_crops"])
        bsz, ch = batch["image"].shape[0], batch["image"].shape[3]
        m = self.model()
        local = fl.vit({"num_classes": m.embed_dim, **m.image}, (self.local_side, self.local_side), ch)
        out["patch_embed"] += n * bsz * local["patch_embed"]
        out["image"] += n * bsz * (local["encoder"] + local["head"])
        out["similarity"] *= 1 + n
        return out
