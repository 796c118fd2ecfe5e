"""FLAVA-style multi-loss pretraining (Singh et al. 2022) on one objective: contrastive + masked image modelling
(MAE pixels) + masked language modelling + masked multimodal modelling + image–text matching with ALBEF's hard
negatives, each weighted in `config.loss` (weight 0 skips its forward passes). MLM alone, ITM + contrastive
(ALBEF-like) and the full combination are presets of experiments/emoji_flava.py."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vlm_jax.config import check_keys
from vlm_jax.data.tokenizer import EVAL_TEMPLATE
from vlm_jax.evals.embedder import Embedder
from vlm_jax.evals.matching import MaskedTextEvaluator, MatchingEvaluator
from vlm_jax.evals.probe import PROBE_DEFAULTS, probe_evaluator
from vlm_jax.losses.generative import token_cross_entropy
from vlm_jax.losses.itm import itm_loss, sample_hard_negatives
from vlm_jax.losses.masked import masked_patch_loss, mlm_masking, pixel_targets, random_masking
from vlm_jax.models.flava import FLAVA
from vlm_jax.models.mae import vit_grid
from vlm_jax.models.text import TextTransformer
from vlm_jax.models.vit import ViT
from vlm_jax.objectives.contrastive import LOSS_KEYS, ContrastiveObjective, check_module_fields
from vlm_jax.train.objective import Evaluator, LossOut, register

PARTS = ("contrastive", "mim", "mlm", "mmm", "itm")
# Singh et al. 2022 weight every loss 1. mask_ratio / norm_pix: MAE's; mlm_ratio: BERT's; itm_label_negatives:
# never draw a caption of the image's own concept (batch["concept"]) as its hard negative.
LOSS_DEFAULTS = dict(name="infonce", impl="full", chunk_size=0, grad_cache=0, temperature_max=100.0,
                     **{f"{p}_weight": 1.0 for p in PARTS}, mask_ratio=0.75, norm_pix=True, mlm_ratio=0.15,
                     itm_label_negatives=True)
MODEL_KEYS = ("image", "text", "fusion", "decoder", "embed_dim", "temperature_init", "bias_init")
SUB_KEYS = ("width", "depth", "mlp_dim", "num_heads", "dtype_mm")
# matching: the held-out ITM and masked-token evaluators (when their heads are trained)
EVAL_DEFAULTS = dict(PROBE_DEFAULTS, matching=True)


@register("flava")
class FlavaObjective(ContrastiveObjective):
    """Contrastive, MIM, MLM, MMM and ITM losses on one FLAVA model; `loss.<part>_weight` 0 turns a part off."""

    CONFIG_DEFAULTS = {"loss": LOSS_DEFAULTS, "evals": EVAL_DEFAULTS}

    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        self.weights = {p: float(config.loss.get(f"{p}_weight", 1.0)) for p in PARTS}
        if not any(self.weights.values()):
            raise ValueError(f"every loss weight is 0; set at least one of {[f'{p}_weight' for p in PARTS]}")
        if int(config.loss.get("grad_cache", 0) or 0) > 1:
            raise ValueError("loss.grad_cache is not supported by the flava objective (its losses are not "
                             "contrastive only)")
        patch, grid = vit_grid(dict(config.model.image), (self.data.image_size,) * 2)
        self.patch, self.num_patches = patch, grid[0] * grid[1]

    def check_config(self, config: ml_collections.ConfigDict) -> None:
        check_keys(config.model, MODEL_KEYS, "model")
        check_keys(config.loss, {**LOSS_DEFAULTS, **{k: 0 for k in LOSS_KEYS}}, "loss")
        check_module_fields(config.model.get("image", {}), ViT, "model.image")
        check_module_fields(config.model.get("text", {}), TextTransformer, "model.text")
        check_keys(config.model.get("fusion", {}), SUB_KEYS, "model.fusion")
        check_keys(config.model.get("decoder", {}), SUB_KEYS, "model.decoder")

    def model(self) -> nn.Module:
        m, ids = self.config.model, self.data.special_ids
        text = dict(m.text, causal=m.text.get("causal", False), pad_id=ids["pad"])
        if not text.get("vocab_size"):
            text["vocab_size"] = ids["vocab"]  # the tokenizer's pieces + BOS + MASK
        return FLAVA(image=dict(m.image), text=text, fusion=dict(m.get("fusion", {})),
                     decoder=dict(m.get("decoder", {})), embed_dim=int(m.embed_dim), image_size=self.data.image_size,
                     temperature_init=m.get("temperature_init", 10.0), bias_init=m.get("bias_init", None))

    def _mlm_inputs(self, rng: jax.Array, text: jax.Array) -> tuple[jax.Array, jax.Array]:
        """BERT-masked text and the chosen positions; EOS and padding are never chosen, random ids are pieces."""
        ids = self.data.special_ids
        maskable = (text != ids["pad"]) & (text != self.data.tokenizer.eos_id)
        return mlm_masking(rng, text, maskable, ids["mask"], (3, self.data.vocab_size),
                           float(self.config.loss.get("mlm_ratio", 0.15)))

    def loss(self, params: Any, extra: Any, batch: dict[str, jax.Array], rng: jax.Array,
             train: bool = True) -> LossOut:
        model, w = self.model(), self.weights

        def apply(method: Any, *args: Any, **kw: Any) -> Any:
            return model.apply({"params": params}, *args, method=method, rngs={"dropout": rng}, **kw)

        image, text = batch["image"], batch["text"]
        total, metrics = jnp.zeros((), jnp.float32), {}
        if w["contrastive"] or w["itm"] or w["mmm"]:
            im = apply(FLAVA.encode_image, image, train=train)
        if w["contrastive"] or w["itm"]:
            tx = apply(FLAVA.encode_text, text, train=train)
        if w["contrastive"]:
            tb = apply(FLAVA.temperature)
            loss, m = self._contrastive(im["z"], tx["z"], tb["t"], tb.get("b"), batch.get("concept"))
            total, metrics = total + w["contrastive"] * loss, dict(metrics, **m, contrastive_loss=loss)
        if w["itm"]:
            labels = batch.get("concept") if self.config.loss.get("itm_label_negatives", True) else None
            neg_txt, neg_img = sample_hard_negatives(jax.random.fold_in(rng, 2), im["z"] @ tx["z"].T, labels)
            states = jnp.concatenate([tx["states"], tx["states"][neg_txt], tx["states"]])
            valid = jnp.concatenate([tx["valid"], tx["valid"][neg_txt], tx["valid"]])
            tokens = jnp.concatenate([im["tokens"], im["tokens"], im["tokens"][neg_img]])
            _, pooled = apply(FLAVA.fuse, states, valid, tokens, train)
            b = image.shape[0]
            match = jnp.concatenate([jnp.ones((b,), bool), jnp.zeros((2 * b,), bool)])
            loss, m = itm_loss(apply(FLAVA.itm_logits, pooled), match)
            total, metrics = total + w["itm"] * loss, dict(metrics, **m)
        if w["mlm"] or w["mmm"]:
            masked, chosen = self._mlm_inputs(jax.random.fold_in(rng, 3), text)
            mt = apply(FLAVA.encode_text, masked, train=train)
            if w["mlm"]:
                loss, m = token_cross_entropy(apply(FLAVA.mlm_logits, mt["states"]), text, chosen)
                total = total + w["mlm"] * loss
                metrics.update(mlm_loss=loss, mlm_accuracy=m["token_accuracy"], mlm_tokens=m["tokens"])
            if w["mmm"]:
                states, _ = apply(FLAVA.fuse, mt["states"], mt["valid"], im["tokens"], train)
                loss, m = token_cross_entropy(apply(FLAVA.mmm_logits, states), text, chosen)
                total = total + w["mmm"] * loss
                metrics.update(mmm_loss=loss, mmm_accuracy=m["token_accuracy"])
        if w["mim"]:
            keep, hidden = random_masking(jax.random.fold_in(rng, 4), image.shape[0], self.num_patches,
                                          float(self.config.loss.get("mask_ratio", 0.75)))
            visible = apply(FLAVA.encode_image, image, keep=keep, train=train)
            pred = apply(FLAVA.mim_pixels, visible["tokens"], keep, train)
            target = pixel_targets(image, self.patch, bool(self.config.loss.get("norm_pix", True)))
            loss, m = masked_patch_loss(pred, target, hidden)
            total, metrics = total + w["mim"] * loss, dict(metrics, mim_loss=loss, mim_mask_ratio=m["mask_ratio"])
        return total, (metrics, extra)

    def forward_flops(self, batch: dict[str, Any]) -> dict[str, float]:
        """The forward passes the enabled losses run: the full image and text (contrastive, ITM, MMM), the masked
        text (MLM, MMM), the fusion encoder over 3B pairs (ITM) and B (MMM), the visible patches and MAE decoder
        (MIM); the hard negatives' similarities run without gradient ("forward_only")."""
        from vlm_jax.losses.masked import num_masked
        from vlm_jax.models.flava import fusion_fields
        from vlm_jax.models.mae import decoder_fields
        from vlm_jax.scaling import compute as fl

        model, w = self.model(), self.weights
        b, h, wd, ch = batch["image"].shape
        length = batch["text"].shape[1]
        image = {"num_classes": model.embed_dim, **model.image}
        vit, cfg = fl.vit(image, (h, wd), ch), fl.vit_config(image)
        d, tw = cfg["width"], int(model.text.get("width", 512))
        text = fl.text_encoder({"num_classes": model.embed_dim, **model.text}, length)
        fu = fusion_fields(model.fusion)
        fw, vocab = int(fu["width"]), int(model.text["vocab_size"])
        fusion = fl.dense(length, tw, fw) + int(fu["depth"]) * (
            fl.attention(length, length, fw, int(fu["num_heads"]))
            + fl.attention(length, vit["tokens"], fw, int(fu["num_heads"]), d) + fl.mlp(length, fw, int(fu["mlp_dim"])))
        out = dict.fromkeys(("patch_embed", "image", "text", "similarity", "fusion", "heads", "decoder",
                             "forward_only"), 0.0)
        if w["contrastive"] or w["itm"] or w["mmm"]:
            out["patch_embed"] += b * vit["patch_embed"]
            out["image"] += b * (vit["encoder"] + vit["head"])
        if w["contrastive"] or w["itm"]:
            out["text"] += b * text
        if w["contrastive"]:
            out["similarity"] += fl.dense(b, model.embed_dim, b)
        if w["itm"]:
            out["forward_only"] += fl.dense(b, model.embed_dim, b)
            out["fusion"] += 3 * b * (fusion + fl.dense(1, fw, 2))
        if w["mlm"] or w["mmm"]:
            out["text"] += b * text
            out["heads"] += b * fl.dense(length, tw, vocab) * bool(w["mlm"])
            out["fusion"] += b * (fusion + fl.dense(length, fw, vocab)) * bool(w["mmm"])
        if w["mim"]:
            n = self.num_patches
            k = n - num_masked(n, float(self.config.loss.get("mask_ratio", 0.75)))
            head = fl.dense(1, d, model.embed_dim)
            if image.get("pool_type", "gap") == "map":
                head += fl.pooler(1, k, d, cfg["num_heads"], cfg["mlp_dim"])
            dec = decoder_fields(model.decoder)
            out["patch_embed"] += b * vit["patch_embed"]
            out["image"] += b * (fl.encoder_stack(k, d, cfg["depth"], cfg["mlp_dim"], cfg["num_heads"]) + head)
            dw, (ph, pw) = int(dec["width"]), self.patch
            out["decoder"] += b * (fl.dense(k, d, dw) + fl.dense(n, dw, ph * pw * ch) + fl.encoder_stack(
                n, dw, int(dec["depth"]), int(dec["mlp_dim"]), int(dec["num_heads"])))
        return out

    def _fused(self, params: Any, image: jax.Array, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Fusion encoder states and pooled vector of (image, tokens) pairs."""
        model = self.model()
        im = model.apply({"params": params}, image, method=FLAVA.encode_image)
        tx = model.apply({"params": params}, tokens, method=FLAVA.encode_text)
        return model.apply({"params": params}, tx["states"], tx["valid"], im["tokens"], method=FLAVA.fuse)

    def _match_prob(self, params: Any, inputs: tuple[jax.Array, jax.Array]) -> jax.Array:
        """P(match) of (image, tokens) pairs from the fusion encoder's match head."""
        _, pooled = self._fused(params, *inputs)
        logits = self.model().apply({"params": params}, pooled, method=FLAVA.itm_logits)
        return jax.nn.softmax(logits, axis=-1)[:, 1]

    def _mlm_predict(self, params: Any, tokens: jax.Array) -> jax.Array:
        """Text-tower predictions of every position (masked language modelling)."""
        model = self.model()
        tx = model.apply({"params": params}, tokens, method=FLAVA.encode_text)
        return jnp.argmax(model.apply({"params": params}, tx["states"], method=FLAVA.mlm_logits), axis=-1)

    def _mmm_predict(self, params: Any, inputs: tuple[jax.Array, jax.Array]) -> jax.Array:
        """Fusion-encoder predictions of every text position given the image (masked multimodal modelling)."""
        states, _ = self._fused(params, *inputs)
        return jnp.argmax(self.model().apply({"params": params}, states, method=FLAVA.mmm_logits), axis=-1)

    def _fixed_mask(self, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The evaluation's masking: the training rule under a fixed key."""
        masked, chosen = self._mlm_inputs(jax.random.key(0), jnp.asarray(tokens))
        return np.asarray(masked), np.asarray(chosen)

    def build_evaluators(self) -> dict[str, Evaluator]:
        """The contrastive evaluators and probes, plus held-out matching and masked-token accuracy."""
        out = super().build_evaluators()
        evals, w = self.config.evals, self.weights
        if not evals.get("matching", True) or not (w["itm"] or w["mlm"] or w["mmm"]):
            return out
        bs, ctx = int(evals.get("batch_size", 256)), lambda: self.trace_context()
        fn = lambda f: Embedder(f, None, None, batch_size=bs, context=ctx).apply  # noqa: E731
        sets = {k: v for k, v in self.data.eval_sets(["emoji"]).items() if k == "emoji/cross"}
        if w["itm"]:
            out["itm"] = MatchingEvaluator(self.embedder, fn(self._match_prob), sets, EVAL_TEMPLATE)
        if w["mlm"] or w["mmm"]:
            out["masked_text"] = MaskedTextEvaluator(
                self.data.tokenize, self._fixed_mask, fn(self._mlm_predict) if w["mlm"] else None,
                fn(self._mmm_predict) if w["mmm"] else None, sets, EVAL_TEMPLATE)
        return out
