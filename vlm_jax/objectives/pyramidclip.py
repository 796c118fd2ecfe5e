"""PyramidCLIP (Gao et al. 2022) on the two-tower trainer: a visual pyramid — the global view (the augmented image),
a local view (a random crop of `local_crop` of its side, scaled back, flipped half the time) and an object level
(a composed scene: the image over a partner from the batch, `object_scale` of the side each, encoded from the
patches inside the two objects' boxes only, with their positions: region features with exact boxes in place of a
detector's) — and a text pyramid from `data.name_texts`: the caption (original text), the name it uses (the
summary) and the scene's two true names joined (the detector's object tags). One shared tower per modality and one
temperature. Peer-level pairs (global, summary) and (local, caption); cross-level pairs (global, tags),
(objects, summary), (local, tags) and (objects, caption); every pair is symmetric InfoNCE with softened targets
(`soft_alpha`), and the loss is (1 − λ − μ)·(GS + LT)/2 + λ·(GA + RS)/2 + μ·(LA + RT)/2 with λ = `global_cross`,
μ = `local_cross`. Zero-shot and retrieval use the global image embedding, as the paper."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from vlm_jax.data.scenes import box_patches, compose_scene_layout
from vlm_jax.losses.pyramidclip import join_tags, softened_infonce
from vlm_jax.models.vit import ViT
from vlm_jax.objectives.contrastive import ContrastiveObjective
from vlm_jax.objectives.views import resized_crops
from vlm_jax.train.objective import LossOut, Normalizers, register

# soft_alpha: the target mass spread over a row's unpaired samples (the paper's α = 0.2); global_cross / local_cross:
# λ and μ, the weights of the cross-level pairs of the global view and of the local view (1/3 each: six equal
# terms); local_crop: the local view's side over the image's (0.7: about half the area, the paper's 50–100%
# crops); object_scale: each scene object's side over the image's (a multiple of the patch size in pixels)
PYRAMIDCLIP_DEFAULTS = dict(soft_alpha=0.2, global_cross=1 / 3, local_cross=1 / 3, local_crop=0.7, object_scale=0.5)
PAIRS = ("global_summary", "local_caption", "global_tags", "objects_summary", "local_tags", "objects_caption")


@register("pyramidclip")
class PyramidCLIPObjective(ContrastiveObjective):
    """Six softened InfoNCE terms between three visual and three text levels."""

    NAFLEX = False  # crops and scenes are cut from square pixel images
    CONTRASTIVE_SMOOTHING = False
    OWN_LOSS_DEFAULTS = PYRAMIDCLIP_DEFAULTS
    WHOLE_BATCH_INFONCE = "PyramidCLIP's six softened InfoNCE terms span the whole batch"
    WHOLE_BATCH_STEP = "PyramidCLIP's terms and scene partners span the whole batch"

    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        cfg = self.cfg
        if not getattr(self.data, "name_texts", False):
            raise ValueError("PyramidCLIP contrasts summaries and object tags: set data.name_texts=True (emoji data)")
        lam, mu, alpha = float(cfg["global_cross"]), float(cfg["local_cross"]), float(cfg["soft_alpha"])
        if lam < 0 or mu < 0 or lam + mu > 1 or not 0.0 <= alpha < 1.0:
            raise ValueError(f"loss.global_cross and loss.local_cross are >= 0 with sum <= 1 and loss.soft_alpha is in "
                             f"[0, 1), got {lam}, {mu}, {alpha}")
        if not 0.0 < float(cfg["local_crop"]) <= 1.0:
            raise ValueError(f"loss.local_crop must be in (0, 1], got {cfg['local_crop']}")
        patch = tuple(ViT(**dict(config.model.image))._cfg()["patch_size"])
        size = self.data.image_size
        self.object_side = int(round(float(cfg["object_scale"]) * size))
        if patch[0] != patch[1] or self.object_side < patch[0] or self.object_side % patch[0] \
                or self.object_side > size:
            raise ValueError(f"loss.object_scale {cfg['object_scale']} gives {self.object_side}-pixel objects on the "
                             f"{size}-pixel image: their side must be a positive multiple of the (square) patch "
                             f"size {patch} and at most the image's")
        self.patch, self.grid = patch[0], size // patch[0]

    def weights(self) -> dict[str, float]:
        """Each pair's weight in the loss."""
        lam, mu = float(self.cfg["global_cross"]), float(self.cfg["local_cross"])
        peer = (1.0 - lam - mu) / 2
        return dict(global_summary=peer, local_caption=peer, global_tags=lam / 2, objects_summary=lam / 2,
                    local_tags=mu / 2, objects_caption=mu / 2)

    def pyramid(self, rng: jax.Array, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        """The step's inputs: the local views, the scenes with the patches of their two objects ("keep" [B, 2n²]),
        and the joined tags."""
        k_local, k_scene = jax.random.split(rng)
        image, text = batch["image"], batch["text"]
        summary, tags = batch.get("summary", text), batch.get("tags", text)  # `init_batch` shapes: the text stands in
        scenes, pos, partner = compose_scene_layout(k_scene, image, self.object_side / image.shape[1])
        keep = jnp.concatenate([box_patches(pos[:, i], self.object_side, self.patch, self.grid) for i in (0, 1)],
                               axis=1)
        ids = self.data.special_ids
        return {"local": resized_crops(k_local, image, float(self.cfg["local_crop"])), "scenes": scenes, "keep": keep,
                "summary": summary, "tags": join_tags(tags, tags[partner], ids["pad"], ids["eos"])}

    def loss(self, params: Any, extra: Any, batch: dict[str, jax.Array], rng: jax.Array, train: bool = True,
             norm: Normalizers | None = None) -> LossOut:
        """Training: the six terms. Otherwise CLIP's InfoNCE on the global view and the caption."""
        if not train:
            return super().loss(params, extra, batch, rng, train, norm)
        k_views, k_drop, k_drop2 = jax.random.split(rng, 3)
        p = self.pyramid(k_views, batch)
        image, text = batch["image"], batch["text"]
        b, model = image.shape[0], self.model()
        (zimg, ztxt), aux = model.apply({"params": params}, jnp.concatenate([image, p["local"]]),
                                        jnp.concatenate([text, p["summary"], p["tags"]]), train=train,
                                        rngs={"dropout": k_drop})
        (zobj, _), _ = model.apply({"params": params}, p["scenes"], None, train=train, keep=p["keep"],
                                   rngs={"dropout": k_drop2})
        t, alpha = aux["t"], float(self.cfg["soft_alpha"])
        views = {"global": zimg[:b], "local": zimg[b:], "objects": zobj}
        texts = {"caption": ztxt[:b], "summary": ztxt[b:2 * b], "tags": ztxt[2 * b:]}
        metrics: dict[str, jax.Array] = {"t": t}
        total = jnp.zeros((), jnp.float32)
        for pair, weight in self.weights().items():
            v, s = pair.split("_")
            term, acc = softened_infonce(views[v], texts[s], t, alpha)
            metrics[f"{pair}_loss"] = term
            total = total + weight * term
            if pair == "global_summary":
                metrics["acc/i2t"] = acc
        return total, (metrics, extra)

    def forward_flops(self, batch: dict[str, Any], phase: int = 0) -> dict[str, float]:
        """The towers on two views and three texts per image, the scenes' kept patches, and six similarities."""
        from vlm_jax.scaling import compute as fl

        out = super().forward_flops(batch, phase)
        bsz, size, ch = batch["image"].shape[0], batch["image"].shape[1], batch["image"].shape[3]
        m = self.model()
        fields = {"num_classes": m.embed_dim, **m.image}
        full = fl.vit(fields, (size, size), ch)
        kept = fl.vit(fields, (size, size), ch, num_patches=2 * (self.object_side // self.patch) ** 2)
        out["patch_embed"] = 2 * out["patch_embed"] + bsz * full["patch_embed"]  # the scenes' stem: every patch
        out["image"] = 2 * out["image"] + bsz * (kept["encoder"] + kept["head"])
        out["text"] *= 3
        out["similarity"] *= 6
        return out
