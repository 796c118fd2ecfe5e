"""MAE (He et al. 2022): masked-patch pixel reconstruction on the images of an image–text dataset."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vlm_jax.config import check_keys
from vlm_jax.data import image_text as datasets
from vlm_jax.evals.embedder import Embedder
from vlm_jax.evals.probe import PROBE_DEFAULTS, probe_evaluator
from vlm_jax.losses.masked import masked_patch_loss, pixel_targets, random_masking
from vlm_jax.models.mae import MAE, vit_grid
from vlm_jax.models.vit import ViT
from vlm_jax.objectives.contrastive import check_module_fields
from vlm_jax.train.objective import Normalizers, Evaluator, LossOut, Objective, register
from vlm_jax.config_audit import merged

DECODER_KEYS = ("width", "depth", "mlp_dim", "num_heads", "dtype_mm")
# the probes (evals.probe.PROBE_DEFAULTS) and recon_sets: eval sets whose held-out images report reconstruction
# error under a fixed mask.
EVAL_DEFAULTS = dict(PROBE_DEFAULTS, batch_size=256, probe_sets=["emoji", "fashion_mnist"], recon_sets=["emoji"])


class ReconstructionEvaluator:
    """Masked-patch MSE of the model on held-out images under a fixed mask, beside the error of predicting each
    hidden patch's own mean (0 for normalised targets) — the level a model that learned nothing reaches."""

    def __init__(self, errors: Embedder, sets: dict[str, np.ndarray]):
        self.errors, self.sets = errors, sets

    def __call__(self, params: Any, extra: Any) -> dict[str, float]:
        out = {}
        for name, images in self.sets.items():
            err = self.errors.features(params, images)  # [N, 2]: model, mean-predictor
            out[f"{name}/all/mse/model"], out[f"{name}/all/mse/mean"] = (float(v) for v in err.mean(0))
        return out


@register("mae")
class MAEObjective(Objective):
    """MAE: hide `loss.mask_ratio` of the patches, encode the rest, reconstruct the hidden ones' pixels
    (per-patch normalised when `loss.norm_pix`)."""

    CONFIG_DEFAULTS = {"loss": dict(mask_ratio=0.75, norm_pix=True), "evals": EVAL_DEFAULTS}

    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        check_keys(config.model, ("image", "decoder"), "model")
        check_module_fields(config.model.get("image", {}), ViT, "model.image", ("pool_type", "num_classes"))
        check_keys(config.model.get("decoder", {}), DECODER_KEYS, "model.decoder")
        check_keys(config.loss, self.CONFIG_DEFAULTS["loss"], "loss")
        check_keys(config.evals, EVAL_DEFAULTS, "evals")
        self.evals = merged(EVAL_DEFAULTS, config.evals)
        self.data = datasets.get(config.data)
        self.ratio = float(config.loss.get("mask_ratio", 0.75))
        patch, grid = vit_grid(dict(config.model.image), (self.data.image_size,) * 2)
        self.patch, self.num_patches = patch, grid[0] * grid[1]
        random_masking(jax.random.key(0), 1, self.num_patches, self.ratio)  # validates the ratio now

    def model(self) -> nn.Module:
        return MAE(image=dict(self.config.model.image), decoder=dict(self.config.model.get("decoder", {})))

    def init_batch(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
        s = self.data.image_size
        return {"image": jax.ShapeDtypeStruct((batch_size, s, s, 3), jnp.float32)}

    def forward_flops(self, batch: dict[str, Any], phase: int = 0) -> dict[str, float]:
        """The patch stem over every patch, the encoder over the visible ones, the decoder over all."""
        from vlm_jax.scaling.compute import mae_forward

        b, h, w, ch = batch["image"].shape
        return {k: b * v for k, v in mae_forward(self.model(), (h, w), ch, self.ratio).items()}

    def targets(self, image: jax.Array) -> jax.Array:
        """Per-patch pixel targets [B, N, ph·pw·3]."""
        return pixel_targets(image, self.patch, bool(self.config.loss.get("norm_pix", True)))

    def reconstruct(self, params: Any, image: jax.Array, rng: jax.Array,
                    train: bool) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(predicted patches, targets, hidden mask) for `image` under a random mask drawn from `rng`."""
        keep, mask = random_masking(jax.random.fold_in(rng, 1), image.shape[0], self.num_patches, self.ratio)
        pred, _ = self.model().apply({"params": params}, image, train=train, keep=keep, rngs={"dropout": rng})
        return pred, self.targets(image), mask

    def loss(self, params: Any, extra: Any, batch: dict[str, jax.Array], rng: jax.Array, train: bool = True,
             norm: Normalizers | None = None) -> LossOut:
        pred, target, mask = self.reconstruct(params, batch["image"], rng, train)
        loss, metrics = masked_patch_loss(pred, target, mask)
        return loss, (metrics, extra)

    def train_data(self, batch_size: int, seed: int, process_index: int, process_count: int) -> Any:
        return self.data.train(batch_size, seed, process_index, process_count)

    def image_features(self, params: Any, image: jax.Array) -> jax.Array:
        """Mean of the encoder's output tokens with every patch visible (the probes' representation)."""
        return self.model().apply({"params": params}, image)[1]["features"]

    def _tokens(self, params: Any, image: jax.Array) -> jax.Array:
        """The encoder's output tokens with every patch visible (the dense probe's input)."""
        return self.model().apply({"params": params}, image)[1]["img/encoded"]

    def _errors(self, params: Any, image: jax.Array) -> jax.Array:
        """[B, 2] per image: masked-patch MSE of the model and of predicting each hidden patch's mean, under the
        mask of a fixed key."""
        pred, target, mask = self.reconstruct(params, image, jax.random.key(0), False)
        w = mask.astype(jnp.float32)
        per = lambda p: jnp.sum(jnp.mean(jnp.square(p - target), -1) * w, 1) / jnp.sum(w, 1)  # noqa: E731
        return jnp.stack([per(pred), per(jnp.mean(target, -1, keepdims=True))], axis=1)

    def build_evaluators(self) -> dict[str, Evaluator]:
        bs, ctx = int(self.evals["batch_size"]), lambda: self.trace_context()
        features = Embedder(self.image_features, None, None, batch_size=bs, context=ctx)
        tokens = Embedder(self._tokens, None, None, batch_size=bs, context=ctx)
        out = probe_evaluator(self.data, features.features, self.evals, tokens.features)
        recon = list(self.evals["recon_sets"] or [])
        if recon:
            errors = Embedder(self._errors, None, None, batch_size=bs, context=ctx)
            probe = self.data.probe_sets(recon, fashion_train=0)
            out["recon"] = ReconstructionEvaluator(errors, {k: s.test_images for k, s in probe.items()})
        return out

