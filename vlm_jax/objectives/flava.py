"""FLAVA-style multi-loss pretraining (Singh et al. 2022) on one objective: contrastive + masked image modelling
(MAE pixels) + masked language modelling + masked multimodal modelling + image–text matching with ALBEF's hard
negatives (drawn at the contrastive logit scale), each weighted in `config.loss` (weight 0 skips its forward
passes). MMM hides text tokens (BERT's masking, the MLM draw) and image patches (the ViT's mask token) and predicts
both from FLAVA's multimodal encoder: the tokens by cross-entropy, the patches' standardised pixels by MSE (FLAVA
predicts dVAE tokens; we have no dVAE). MLM alone, ITM + contrastive (ALBEF-like) and the full combination are
presets of experiments/emoji_flava.py; docs/masked_and_alignment.md says what differs from the paper."""
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
from vlm_jax.evals.probe import PROBE_DEFAULTS
from vlm_jax.evals.standard import SUITE_DEFAULTS
from vlm_jax.losses.generative import token_cross_entropy
from vlm_jax.losses.itm import itm_loss, sample_hard_negatives
from vlm_jax.losses.masked import caption_mlm, masked_patch_loss, num_masked, pixel_targets, random_masking
from vlm_jax.models.flava import FLAVA
from vlm_jax.models.mae import vit_grid
from vlm_jax.models.text import TextTransformer
from vlm_jax.models.vit import ViT
from vlm_jax.objectives.contrastive import LOSS_KEYS, ContrastiveObjective, check_module_fields
from vlm_jax.train.objective import Evaluator, LossOut, Normalizers, Objective, normalizer, register

PARTS = ("contrastive", "mim", "mlm", "mmm", "itm")
# Singh et al. 2022 weight every loss 1. mask_ratio / norm_pix: MAE's (norm_pix also for MMM's pixel targets);
# mlm_ratio: BERT's (MLM and MMM text); mmm_mask_ratio: the share of patches MMM hides (FLAVA follows BEiT's ~40%,
# block-wise; here uniform); itm_label_negatives: never draw a caption of the image's own concept
# (batch["concept"]) as its hard negative.
LOSS_DEFAULTS = dict(name="infonce", impl="full", chunk_size=0, temperature_max=100.0,
                     **{f"{p}_weight": 1.0 for p in PARTS}, mask_ratio=0.75, norm_pix=True, mlm_ratio=0.15,
                     mmm_mask_ratio=0.4, itm_label_negatives=True)
MODEL_KEYS = ("image", "text", "fusion", "decoder", "embed_dim", "temperature_init", "bias_init")
SUB_KEYS = ("width", "depth", "mlp_dim", "num_heads", "dtype_mm")
# matching: the held-out ITM and masked-token evaluators (when their heads are trained)
EVAL_DEFAULTS = dict(PROBE_DEFAULTS, **SUITE_DEFAULTS, matching=True)


def mmm_loss(text_logits: jax.Array, text: jax.Array, chosen: jax.Array, pixels: jax.Array, target: jax.Array,
             hidden: jax.Array, count: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Masked multimodal modelling: mean token cross-entropy over the masked text positions (`chosen` [B, L]) plus
    mean per-patch pixel MSE over the hidden patches (`hidden` [B, N]), summed unweighted (FLAVA adds its text and
    image terms; its image term is dVAE-token CE, ours MAE's pixel regression). `count`: what the text term divides
    by (default: the masked tokens here)."""
    text_loss, m = token_cross_entropy(text_logits, text, chosen, count=count)
    image_loss, _ = masked_patch_loss(pixels, target, hidden)
    loss = text_loss + image_loss
    return loss, {"mmm_loss": loss, "mmm_text_loss": text_loss, "mmm_image_loss": image_loss,
                  "mmm_accuracy": m["token_accuracy"]}


@register("flava")
class FlavaObjective(ContrastiveObjective):
    """Contrastive, MIM, MLM, MMM and ITM losses on one FLAVA model; `loss.<part>_weight` 0 turns a part off."""

    NAFLEX = False  # MIM targets and the fusion read image tokens

    CONFIG_DEFAULTS = {"loss": LOSS_DEFAULTS, "evals": EVAL_DEFAULTS}

    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        self.weights = {p: float(config.loss.get(f"{p}_weight", 1.0)) for p in PARTS}
        if not any(self.weights.values()):
            raise ValueError(f"every loss weight is 0; set at least one of {[f'{p}_weight' for p in PARTS]}")
        if int(config.get("grad_accum_steps", 1)) > 1 and (self.weights["contrastive"] or self.weights["itm"]):
            raise ValueError(f"grad_accum_steps={config.grad_accum_steps} is not supported by the flava objective "
                             "with loss.contrastive_weight or loss.itm_weight > 0: image–text matching draws hard "
                             "negatives from the whole batch and runs the fusion encoder on them, which GradCache's "
                             "micro-batches cannot recompute; use a smaller batch_size (or more devices) instead "
                             "(the masked losses alone accumulate exactly)")
        patch, grid = vit_grid(dict(config.model.image), (self.data.image_size,) * 2)
        self.patch, self.num_patches = patch, grid[0] * grid[1]

    def check_config(self, config: ml_collections.ConfigDict) -> None:
        check_keys(config.model, MODEL_KEYS, "model")
        check_keys(config.loss, {**LOSS_DEFAULTS, **{k: 0 for k in LOSS_KEYS}}, "loss")
        check_module_fields(config.model.get("image", {}), ViT, "model.image", ("mask_token",))
        check_module_fields(config.model.get("text", {}), TextTransformer, "model.text")
        check_keys(config.model.get("fusion", {}), SUB_KEYS, "model.fusion")
        check_keys(config.model.get("decoder", {}), SUB_KEYS, "model.decoder")

    def model(self) -> nn.Module:
        m, ids = self.config.model, self.data.special_ids
        text = dict(m.text, causal=m.text.get("causal", False), pad_id=ids["pad"])
        if not text.get("vocab_size"):
            text["vocab_size"] = ids["vocab"]  # the tokenizer's pieces + BOS + MASK
        image = dict(m.image, mask_token=bool(float(self.config.loss.get("mmm_weight", 1.0))))  # MMM hides patches
        return FLAVA(image=image, text=text, fusion=dict(m.get("fusion", {})),
                     decoder=dict(m.get("decoder", {})), embed_dim=int(m.embed_dim), image_size=self.data.image_size,
                     temperature_init=m.get("temperature_init", 10.0), bias_init=m.get("bias_init", None))

    def _mlm_inputs(self, rng: jax.Array, text: jax.Array) -> tuple[jax.Array, jax.Array]:
        """BERT-masked text and the chosen positions (`caption_mlm`)."""
        return caption_mlm(rng, text, self.data.special_ids, self.data.vocab_size,
                           float(self.config.loss.get("mlm_ratio", 0.15)))

    def masks(self, rng: jax.Array, text: jax.Array, batch_size: int) -> dict[str, jax.Array]:
        """The MLM / MMM draws of one step: {"text": BERT-masked text, "chosen": its masked positions, "hidden":
        bool [B, N] the patches MMM hides}."""
        masked, chosen = self._mlm_inputs(jax.random.fold_in(rng, 3), text)
        _, hidden = random_masking(jax.random.fold_in(rng, 5), batch_size, self.num_patches,
                                   float(self.config.loss.get("mmm_mask_ratio", 0.4)))
        return {"text": masked, "chosen": chosen, "hidden": hidden}

    def itm_negatives(self, params: Any, zimg: jax.Array, ztxt: jax.Array, labels: jax.Array | None,
                      rng: jax.Array) -> tuple[jax.Array, jax.Array]:
        """ALBEF's hard negatives of unit embeddings, drawn at the model's contrastive logit scale t."""
        t = self.model().apply({"params": params}, method=FLAVA.temperature)["t"]
        return sample_hard_negatives(rng, zimg @ ztxt.T, t, labels)

    def _mmm_forward(self, apply: Any, image: jax.Array, hidden: jax.Array, states: jax.Array, valid: jax.Array,
                     train: bool) -> tuple[jax.Array, jax.Array]:
        """(vocabulary logits of every text position, pixels of every patch) from the multimodal encoder over the
        image with `hidden` patches replaced by the mask token and the (masked) text's `states`."""
        tokens = apply(FLAVA.encode_image, image, patch_mask=hidden, train=train)["tokens"]
        _, fused = apply(FLAVA.fuse, tokens, states, valid, train)
        return apply(FLAVA.mmm_logits, fused["text"]), apply(FLAVA.mmm_pixels, fused["image"])

    def mmm_predictions(self, params: Any, image: jax.Array, hidden: jax.Array,
                        text: jax.Array) -> tuple[jax.Array, jax.Array]:
        """MMM's (text logits, patch pixels) of `image` with `hidden` patches and the masked `text` (no dropout)."""
        model = self.model()
        apply = lambda method, *a, **k: model.apply({"params": params}, *a, method=method, **k)  # noqa: E731
        tx = apply(FLAVA.encode_text, text)
        return self._mmm_forward(apply, image, hidden, tx["states"], tx["valid"], False)

    def normalizers(self, batch: dict[str, jax.Array], rng: jax.Array, train: bool = True) -> Normalizers:
        """{"mlm_tokens": the masked text tokens} (MLM's and MMM's text term; the hidden patches are a fixed share)."""
        if not (self.weights["mlm"] or self.weights["mmm"]):
            return {}
        return {"mlm_tokens": jnp.sum(self.masks(rng, batch["text"], batch["image"].shape[0])["chosen"]
                                      .astype(jnp.float32))}

    def value_and_grad(self, params: Any, extra: Any, batch: dict[str, jax.Array], rng: jax.Array,
                       micro_batches: int = 1) -> tuple[LossOut, Any]:
        """The plain accumulation of `Objective` (only the masked losses accumulate; see __init__)."""
        return Objective.value_and_grad(self, params, extra, batch, rng, micro_batches)

    def loss(self, params: Any, extra: Any, batch: dict[str, jax.Array], rng: jax.Array,
             train: bool = True, norm: Normalizers | None = None) -> LossOut:
        model, w = self.model(), self.weights

        def apply(method: Any, *args: Any, **kw: Any) -> Any:
            return model.apply({"params": params}, *args, method=method, rngs={"dropout": rng}, **kw)

        image, text = batch["image"], batch["text"]
        total, metrics = jnp.zeros((), jnp.float32), {}
        norm_pix = bool(self.config.loss.get("norm_pix", True))
        if w["contrastive"] or w["itm"]:
            im = apply(FLAVA.encode_image, image, train=train)
            tx = apply(FLAVA.encode_text, text, train=train)
        if w["contrastive"]:
            tb = apply(FLAVA.temperature)
            loss, m = self._contrastive(im["z"], tx["z"], tb["t"], tb.get("b"), batch.get("concept"))
            total, metrics = total + w["contrastive"] * loss, dict(metrics, **m, contrastive_loss=loss)
        if w["itm"]:
            labels = batch.get("concept") if self.config.loss.get("itm_label_negatives", True) else None
            neg_txt, neg_img = self.itm_negatives(params, im["z"], tx["z"], labels, jax.random.fold_in(rng, 2))
            states = jnp.concatenate([tx["states"], tx["states"][neg_txt], tx["states"]])
            valid = jnp.concatenate([tx["valid"], tx["valid"][neg_txt], tx["valid"]])
            tokens = jnp.concatenate([im["tokens"], im["tokens"], im["tokens"][neg_img]])
            pooled, _ = apply(FLAVA.fuse, tokens, states, valid, train)
            b = image.shape[0]
            match = jnp.concatenate([jnp.ones((b,), bool), jnp.zeros((2 * b,), bool)])
            loss, m = itm_loss(apply(FLAVA.itm_logits, pooled), match)
            total, metrics = total + w["itm"] * loss, dict(metrics, **m)
        if w["mlm"] or w["mmm"]:
            masks = self.masks(rng, text, image.shape[0])
            mt = apply(FLAVA.encode_text, masks["text"], train=train)
            if w["mlm"]:
                count = normalizer(norm, "mlm_tokens", jnp.maximum(jnp.sum(masks["chosen"]), 1).astype(jnp.float32))
                loss, m = token_cross_entropy(apply(FLAVA.mlm_logits, mt["states"]), text, masks["chosen"],
                                              count=count)
                total = total + w["mlm"] * loss
                metrics.update(mlm_loss=loss, mlm_accuracy=m["token_accuracy"], mlm_tokens=m["tokens"])
            if w["mmm"]:
                logits, pixels = self._mmm_forward(apply, image, masks["hidden"], mt["states"], mt["valid"], train)
                count = normalizer(norm, "mlm_tokens", jnp.maximum(jnp.sum(masks["chosen"]), 1).astype(jnp.float32))
                loss, m = mmm_loss(logits, text, masks["chosen"], pixels, pixel_targets(image, self.patch, norm_pix),
                                   masks["hidden"], count)
                total, metrics = total + w["mmm"] * loss, dict(metrics, **m)
        if w["mim"]:
            keep, hidden = random_masking(jax.random.fold_in(rng, 4), image.shape[0], self.num_patches,
                                          float(self.config.loss.get("mask_ratio", 0.75)))
            visible = apply(FLAVA.encode_image, image, keep=keep, train=train)
            pred = apply(FLAVA.mim_pixels, visible["tokens"], keep, train)
            loss, m = masked_patch_loss(pred, pixel_targets(image, self.patch, norm_pix), hidden)
            total, metrics = total + w["mim"] * loss, dict(metrics, mim_loss=loss, mim_mask_ratio=m["mask_ratio"])
        return total, (metrics, extra)

    def forward_flops(self, batch: dict[str, Any], phase: int = 0) -> dict[str, float]:
        """The forward passes the enabled losses run: the full image and text (contrastive, ITM), the masked text
        (MLM, MMM), the image with hidden patches as mask tokens (MMM), the multimodal encoder over 3B pairs (ITM)
        and B (MMM) with its heads, the visible patches and MAE decoder (MIM). Forward only: the hard negatives'
        similarities (no gradient) and the pooling and projection heads whose embeddings no loss differentiates: of
        the masked passes (MIM's and MMM's image, the masked text), and without the contrastive loss of the full
        passes too (their embeddings only pick ITM's negatives)."""
        from vlm_jax.models.flava import fusion_fields
        from vlm_jax.models.mae import decoder_fields
        from vlm_jax.scaling import compute as fl

        model, w = self.model(), self.weights
        b, h, wd, ch = batch["image"].shape
        length = batch["text"].shape[1]
        image = {"num_classes": model.embed_dim, **model.image}
        vit, cfg = fl.vit(image, (h, wd), ch), fl.vit_config(image)
        d, tw = cfg["width"], int(model.text.get("width", 512))
        text_fields = {"num_classes": model.embed_dim, **model.text}
        text = fl.text_encoder(text_fields, length)
        text_head = text - fl.text_encoder({**text_fields, "num_classes": None, "pool_type": "gap"}, length)
        fu = fusion_fields(model.fusion)
        fw, vocab, n = int(fu["width"]), int(model.text["vocab_size"]), self.num_patches
        (ph, pw) = self.patch
        fusion = fl.dense(vit["tokens"], d, fw) + fl.dense(length, tw, fw) + fl.encoder_stack(
            1 + vit["tokens"] + length, fw, int(fu["depth"]), int(fu["mlp_dim"]), int(fu["num_heads"]))
        out = dict.fromkeys(("patch_embed", "image", "text", "similarity", "fusion", "heads", "decoder",
                             "forward_only"), 0.0)
        if w["contrastive"] or w["itm"]:  # without the contrastive loss the embeddings only pick ITM's negatives
            heads, trained = b * (vit["head"] + text_head), bool(w["contrastive"])
            out["patch_embed"] += b * vit["patch_embed"]
            out["image"] += b * vit["encoder"]
            out["text"] += b * (text - text_head)
            out["heads" if trained else "forward_only"] += heads
        if w["contrastive"]:
            out["similarity"] += fl.dense(b, model.embed_dim, b)
        if w["itm"]:
            out["forward_only"] += fl.dense(b, model.embed_dim, b)
            out["fusion"] += 3 * b * (fusion + fl.dense(1, fw, 2))
        if w["mlm"] or w["mmm"]:
            out["text"] += b * (text - text_head)
            out["forward_only"] += b * text_head
            out["heads"] += b * fl.dense(length, tw, vocab) * bool(w["mlm"])
        if w["mmm"]:
            out["patch_embed"] += b * vit["patch_embed"]
            out["image"] += b * vit["encoder"]
            out["forward_only"] += b * vit["head"]
            out["fusion"] += b * (fusion + fl.dense(length, fw, vocab) + fl.dense(n, fw, ph * pw * ch))
        if w["mim"]:
            k = n - num_masked(n, float(self.config.loss.get("mask_ratio", 0.75)))
            pool = image.get("pool_type", "gap")
            head = fl.dense(1, d, model.embed_dim)
            if pool == "map":
                head += fl.pooler(1, k, d, cfg["num_heads"], cfg["mlp_dim"])
            dec = decoder_fields(model.decoder)
            out["patch_embed"] += b * vit["patch_embed"]
            out["image"] += b * fl.encoder_stack(k + (pool == "tok"), d, cfg["depth"], cfg["mlp_dim"],
                                                 cfg["num_heads"])
            out["forward_only"] += b * head
            dw = int(dec["width"])
            out["decoder"] += b * (fl.dense(k, d, dw) + fl.dense(n, dw, ph * pw * ch) + fl.encoder_stack(
                n, dw, int(dec["depth"]), int(dec["mlp_dim"]), int(dec["num_heads"])))
        return out

    def _fused(self, params: Any, image: jax.Array, tokens: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Multimodal encoder ([CLS_M] output, {"image", "text"} states) of (image, tokens) pairs."""
        model = self.model()
        im = model.apply({"params": params}, image, method=FLAVA.encode_image)
        tx = model.apply({"params": params}, tokens, method=FLAVA.encode_text)
        return model.apply({"params": params}, im["tokens"], tx["states"], tx["valid"], method=FLAVA.fuse)

    def _match_prob(self, params: Any, inputs: tuple[jax.Array, jax.Array]) -> jax.Array:
        """P(match) of (image, tokens) pairs from the match head on the multimodal [CLS_M]."""
        pooled, _ = self._fused(params, *inputs)
        logits = self.model().apply({"params": params}, pooled, method=FLAVA.itm_logits)
        return jax.nn.softmax(logits, axis=-1)[:, 1]

    def _mlm_predict(self, params: Any, tokens: jax.Array) -> jax.Array:
        """Text-tower predictions of every position (masked language modelling)."""
        model = self.model()
        tx = model.apply({"params": params}, tokens, method=FLAVA.encode_text)
        return jnp.argmax(model.apply({"params": params}, tx["states"], method=FLAVA.mlm_logits), axis=-1)

    def _mmm_predict(self, params: Any, inputs: tuple[jax.Array, jax.Array]) -> jax.Array:
        """Multimodal predictions of every text position given the whole image (masked multimodal modelling)."""
        _, fused = self._fused(params, *inputs)
        return jnp.argmax(self.model().apply({"params": params}, fused["text"], method=FLAVA.mmm_logits), axis=-1)

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
