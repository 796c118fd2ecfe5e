"""FILIP (Yao et al. 2022) on the two-tower trainer: every image patch and text token gets a unit embedding (own
linear heads, `TwoTower.token_embeddings`), and the InfoNCE logits are token-wise late-interaction similarities
(`losses/filip.py`); zero-shot classification and retrieval score the same way (`LateInteractionEmbedder`)."""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from vlm_jax.evals.embedder import LateInteractionEmbedder
from vlm_jax.losses.filip import filip_loss
from vlm_jax.models import TwoTower
from vlm_jax.objectives.contrastive import ContrastiveObjective, Towers
from vlm_jax.train.objective import Evaluator, Normalizers, register


@register("filip")
class FILIPObjective(ContrastiveObjective):
    """Token-wise late-interaction InfoNCE; evaluators score by the same token-wise similarity."""

    CONTRASTIVE_SMOOTHING = False

    def check_config(self, config: ml_collections.ConfigDict) -> None:
        super().check_config(config)
        name, impl = config.loss.get("name", "infonce"), config.loss.get("impl", "full")
        if name != "infonce" or impl != "full":
            raise ValueError(f"FILIP's loss is InfoNCE over token-wise similarities of the whole batch: loss.name must "
                             f"be 'infonce' and loss.impl 'full' (loss.chunk_size tiles the images), got name={name!r}, "
                             f"impl={impl!r}")
        ev = config.get("evals", {})
        dot_only = [k for k in ("probe_sets", "suite") if ev.get(k)]
        if dot_only:
            raise ValueError(f"FILIP scores images and texts token by token; evals {dot_only} compare single "
                             f"embeddings and are not defined for it: leave them empty")

    def model(self) -> nn.Module:
        base = super().model()
        return TwoTower(**{f: getattr(base, f) for f in ("image", "text", "embed_dim", "temperature_init",
                                                          "bias_init", "text_tower")}, token_embeddings=True)

    def _towers(self, params: Any, extra: Any, batch: dict[str, jax.Array], rng: jax.Array, train: bool = True,
                norm: Normalizers | None = None) -> Towers:
        """The pooled embeddings (logged, not in the loss) and both towers' token embeddings (rows)."""
        (zimg, ztxt), aux = self.model().apply({"params": params}, batch["image"], batch["text"], train=train,
                                               rngs={"dropout": rng})
        return Towers(zimg, ztxt, aux["t"], aux.get("b"), jnp.zeros((), jnp.float32), {}, extra,
                      rows={"img_tokens": aux["img/token_z"], "txt_tokens": aux["txt/token_z"]})

    def _contrastive(self, zimg: jax.Array, ztxt: jax.Array, t: jax.Array, b: jax.Array | None,
                     labels: jax.Array | None = None, rows: dict[str, jax.Array] | None = None,
                     shared: dict[str, jax.Array] | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
        """FILIP's loss over the whole batch; padding is where a token embedding is the zero vector."""
        img, txt = rows["img_tokens"], rows["txt_tokens"]
        valid = lambda x: jnp.any(jax.lax.stop_gradient(x) != 0, axis=-1)  # noqa: E731
        loss, metrics = filip_loss(img, txt, valid(txt), t, valid(img),
                                   chunk_size=int(self.config.loss.get("chunk_size", 0) or 0))
        return loss, dict(metrics, t=t)

    @functools.cached_property
    def embedder(self) -> LateInteractionEmbedder:
        """Token embeddings of either tower for the evaluators (token-wise similarity)."""
        model = self.model()
        image_fn = lambda p, x: model.apply({"params": p}, x, None)[1]["img/token_z"]  # noqa: E731
        text_fn = lambda p, t: model.apply({"params": p}, None, t)[1]["txt/token_z"]  # noqa: E731
        return LateInteractionEmbedder(image_fn, text_fn, self.data.tokenize,
                                       batch_size=self.config.evals.get("batch_size", 256),
                                       context=lambda: self.trace_context())

    def build_evaluators(self) -> dict[str, Evaluator]:
        """Zero-shot classification and retrieval by token-wise similarity (the data's evaluators)."""
        return dict(self.data.evaluators(self.embedder, self.config.evals))

    def forward_flops(self, batch: dict[str, Any], phase: int = 0) -> dict[str, float]:
        """Both towers, the token heads, and the token-wise similarity (B × B × Ni × Nt dot products)."""
        from vlm_jax.scaling.compute import dense, model_forward, vit, vit_config

        out = model_forward(self.model(), batch)
        image = batch["image"]
        bsz = jax.tree.leaves(image)[0].shape[0]
        d = int(self.config.model.embed_dim)
        m = self.model()
        ni = vit({"num_classes": d, **m.image}, tuple(image.shape[1:3]), image.shape[3])["tokens"] \
            if not isinstance(image, dict) else image["patches"].shape[1]
        nt = batch["text"].shape[1]
        widths = (int(vit_config(m.image)["width"]), int(m.text.get("width", 512)))
        out["token_heads"] = bsz * (dense(ni, widths[0], d) + dense(nt, widths[1], d))
        out["similarity"] = dense(bsz * ni, d, bsz * nt)
        return out
