"""The SigLIP 2 training recipe (Tschannen et al. 2025) on the sigmoid objective: SigLIP + a LocCa decoder loss
(captioning, referring expression, grounded captioning on scenes composed from the batch) from the start, and
for the last part of training SILC self-distillation (an EMA teacher sees the full image, the student local
crops) and TIPS masked prediction of the teacher's patch features. Each part has its own weight (0: off)."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from vlm_jax.config import check_keys
from vlm_jax.data.scenes import compose_scenes
from vlm_jax.losses.generative import token_cross_entropy
from vlm_jax.losses.locca import BOX_TOKENS, box_bins, task_sequences
from vlm_jax.losses.masked import random_masking
from vlm_jax.models.siglip2 import TEACHER, DistillHead, SigLIP2
from vlm_jax.models.text import TextTransformer
from vlm_jax.models.vit import ViT
from vlm_jax.objectives.contrastive import LOSS_KEYS, ContrastiveObjective, check_module_fields
from vlm_jax.train.objective import LossOut, register

# Paper defaults as we read Tschannen et al. 2025: decoder loss from the start (weight 1); self-distillation and
# masked prediction in the last 20% of training with weights 1 and 0.25; SILC's fixed EMA momentum; DINO's
# temperatures and centre momentum. Local crops: `local_crops` random crops of `crop_fraction` of the side, resized
# to the input size; TIPS hides `masked_ratio` of the student's patches behind the mask token.
LOSS_DEFAULTS = dict(name="sigmoid", impl="full", chunk_size=0, grad_cache=0, temperature_max=0.0,
                     locca_weight=1.0, distill_weight=1.0, masked_weight=0.25, distill_start=0.8, ema=0.996,
                     local_crops=2, crop_fraction=0.5, masked_ratio=0.5, teacher_temperature=0.04,
                     student_temperature=0.1, center_momentum=0.9, box_bins=32, scene_scale=0.5)
MODEL_KEYS = ("image", "text", "decoder", "head", "embed_dim", "temperature_init", "bias_init")


def soft_cross_entropy(teacher_probs: jax.Array, student_logits: jax.Array, temperature: float) -> jax.Array:
    """−Σ p_teacher · log softmax(student / τ) over the last axis (per row)."""
    return -jnp.sum(teacher_probs * jax.nn.log_softmax(student_logits / temperature, axis=-1), axis=-1)


def random_crops(rng: jax.Array, images: jax.Array, fraction: float) -> jax.Array:
    """A square crop of `fraction` of the side at a random place in each image, resized back to the input size."""
    b, s, _, c = images.shape
    size = max(1, int(round(fraction * s)))
    top_left = jax.random.randint(rng, (b, 2), 0, s - size + 1)
    crop = jax.vmap(lambda im, p: jax.lax.dynamic_slice(im, (p[0], p[1], 0), (size, size, c)))(images, top_left)
    return jax.image.resize(crop, (b, s, s, c), "linear")


@register("siglip2")
class SigLIP2Objective(ContrastiveObjective):
    """SigLIP + LocCa decoder loss + (late) SILC self-distillation and TIPS masked prediction."""

    CONFIG_DEFAULTS = {"loss": LOSS_DEFAULTS, "evals": ContrastiveObjective.CONFIG_DEFAULTS["evals"]}

    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        loss = {**LOSS_DEFAULTS, **config.loss.to_dict()}
        self.loss_cfg = loss
        self.start_step = int(round(float(loss["distill_start"]) * int(config.get("total_steps", 0))))
        ids = self.data.special_ids
        self.text_vocab = ids["vocab"]
        self.task_ids = (self.text_vocab, self.text_vocab + 1, self.text_vocab + 2)
        self.bin_offset = self.text_vocab + 3

    def check_config(self, config: ml_collections.ConfigDict) -> None:
        check_keys(config.model, MODEL_KEYS, "model")
        check_keys(config.loss, {**LOSS_DEFAULTS, **{k: 0 for k in LOSS_KEYS}}, "loss")
        check_module_fields(config.model.get("image", {}), ViT, "model.image", ("mask_token",))
        check_module_fields(config.model.get("text", {}), TextTransformer, "model.text")
        check_keys(config.model.get("decoder", {}), ("width", "depth", "mlp_dim", "num_heads", "dtype_mm"),
                   "model.decoder")
        check_module_fields(config.model.get("head", {}), DistillHead, "model.head")

    def model(self) -> nn.Module:
        m, ids = self.config.model, self.data.special_ids
        text = dict(m.text)
        if not text.get("vocab_size"):
            text["vocab_size"] = self.data.vocab_size
        bins = int(self.config.loss.get("box_bins", 32))
        return SigLIP2(image=dict(m.image), text=text, decoder=dict(m.get("decoder", {})), head=dict(m.get("head", {})),
                       embed_dim=int(m.embed_dim), decoder_vocab=ids["vocab"] + 3 + bins,
                       decoder_len=self.data.text_len + 1 + BOX_TOKENS, pad_id=ids["pad"],
                       temperature_init=m.get("temperature_init", 10.0), bias_init=m.get("bias_init", -10.0))

    def forward_flops(self, batch: dict[str, Any]) -> dict[str, float]:
        """SigLIP's towers; LocCa's scene forward and decoder; and self-distillation and masked prediction (teacher
        forward only; student crops and masked view) weighted by the share of training they run in."""
        from vlm_jax.scaling import compute as fl

        model, cfg = self.model(), self.loss_cfg
        b, h, w, ch = batch["image"].shape
        image = {"num_classes": model.embed_dim, **model.image}
        vit, d = fl.vit(image, (h, w), ch), fl.vit_config(image)["width"]
        one_image = vit["encoder"] + vit["head"]
        text = {"num_classes": model.embed_dim, **model.text}
        out = {"patch_embed": b * vit["patch_embed"], "image": b * one_image,
               "text": b * fl.text_encoder(text, batch["text"].shape[1]),
               "similarity": fl.dense(b, model.embed_dim, b), "decoder": 0.0, "self_supervised": 0.0,
               "forward_only": 0.0}
        if float(cfg["locca_weight"]):
            out["patch_embed"] += b * vit["patch_embed"]
            out["image"] += b * one_image
            dec = {**model.decoder, "vocab_size": model.decoder_vocab, "cross_attention": True}
            out["decoder"] = b * fl.text_decoder(dec, model.decoder_len, vit["tokens"], d)
        if float(cfg["distill_weight"]) or float(cfg["masked_weight"]):
            hd = {"hidden": 256, "bottleneck": 64, "prototypes": 256, **model.head}
            head = fl.dense(1, d, hd["hidden"]) + fl.dense(1, hd["hidden"], hd["hidden"]) + \
                fl.dense(1, hd["hidden"], hd["bottleneck"]) + fl.dense(1, hd["bottleneck"], hd["prototypes"])
            share = 1.0 - min(1.0, float(cfg["distill_start"]))
            views = int(cfg["local_crops"]) + 1  # student crops and masked view
            out["patch_embed"] += share * b * views * vit["patch_embed"]
            out["self_supervised"] = share * b * (views * one_image + int(cfg["local_crops"]) * head
                                                  + vit["tokens"] * head)
            # the teacher: the full image and the projection of its pooled feature and every token, no backward
            out["forward_only"] = share * b * (vit["patch_embed"] + one_image + (1 + vit["tokens"]) * head)
        return out

    def init_extra(self, params: Any) -> Any:
        """The EMA teacher (a copy of the student's image tower and projection head), DINO's two centres, and the
        count of applied updates (which switches self-distillation on)."""
        k = int(self.config.model.get("head", {}).get("prototypes", 256))
        return {"teacher": {name: jax.tree.map(jnp.array, params[name]) for name in TEACHER},
                "center": jnp.zeros((k,), jnp.float32), "patch_center": jnp.zeros((k,), jnp.float32),
                "updates": jnp.zeros((), jnp.int32)}

    def after_update(self, params: Any, extra: Any) -> Any:
        """teacher ← m · teacher + (1 − m) · student, after every applied update."""
        m = float(self.loss_cfg["ema"])
        teacher = {name: jax.tree.map(lambda t, s: m * t + (1.0 - m) * s, extra["teacher"][name], params[name])
                   for name in TEACHER}
        return dict(extra, teacher=teacher, updates=extra["updates"] + 1)

    def _locca(self, apply: Any, image: jax.Array, text: jax.Array, image_tokens: jax.Array, rng: jax.Array,
               train: bool) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Decoder loss: each row gets one task; CAP reads the row's own image, REF / GCAP a composed scene."""
        ids, cfg = self.data.special_ids, self.loss_cfg
        scenes, boxes, _ = compose_scenes(jax.random.fold_in(rng, 5), image, float(cfg["scene_scale"]))
        scene_tokens = apply(SigLIP2.encode_image, scenes, train=train)["tokens"]
        task = jax.random.randint(jax.random.fold_in(rng, 6), (image.shape[0],), 0, 3)
        bins = box_bins(boxes, int(cfg["box_bins"])) + self.bin_offset
        seq, pred = task_sequences(text, bins, task, self.data.tokenizer.eos_id, ids["pad"], self.task_ids)
        context = jnp.where((task == 0)[:, None, None], image_tokens, scene_tokens)
        logits = apply(SigLIP2.decode, seq[:, :-1], context, train)
        loss, m = token_cross_entropy(logits, seq[:, 1:], pred[:, 1:])
        return loss, {"locca_loss": loss, "locca_accuracy": m["token_accuracy"]}

    def _self_supervised(self, params: Any, extra: Any, image: jax.Array, rng: jax.Array,
                         train: bool) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
        """(SILC loss, TIPS loss, new centre, new patch centre); the teacher is a constant to autodiff."""
        cfg, model = self.loss_cfg, self.model()
        teacher_params = {**params, **jax.lax.stop_gradient(extra["teacher"])}
        student = lambda method, *a, **k: model.apply({"params": params}, *a, method=method, **k)  # noqa: E731
        teacher = lambda method, *a, **k: model.apply({"params": teacher_params}, *a, method=method, **k)  # noqa: E731
        full = teacher(SigLIP2.encode_image, image)
        t_global = jax.lax.stop_gradient(teacher(SigLIP2.project, full["pooled"]))
        t_patch = jax.lax.stop_gradient(teacher(SigLIP2.project, full["tokens"]))
        tt, ts = float(cfg["teacher_temperature"]), float(cfg["student_temperature"])
        p_global = jax.nn.softmax((t_global - extra["center"]) / tt, axis=-1)
        p_patch = jax.nn.softmax((t_patch - extra["patch_center"]) / tt, axis=-1)
        distill = jnp.zeros((), jnp.float32)
        n_crops = int(cfg["local_crops"])
        for i in range(n_crops):
            crops = random_crops(jax.random.fold_in(rng, 10 + i), image, float(cfg["crop_fraction"]))
            local = student(SigLIP2.encode_image, crops, train=train)
            distill += jnp.mean(soft_cross_entropy(p_global, student(SigLIP2.project, local["pooled"]), ts))
        distill = distill / max(n_crops, 1)
        n = full["tokens"].shape[1]
        _, hidden = random_masking(jax.random.fold_in(rng, 20), image.shape[0], n, float(cfg["masked_ratio"]))
        masked = student(SigLIP2.encode_image, image, patch_mask=hidden, train=train)
        per_patch = soft_cross_entropy(p_patch, student(SigLIP2.project, masked["tokens"]), ts)
        w = hidden.astype(jnp.float32)
        tips = jnp.sum(per_patch * w) / jnp.maximum(jnp.sum(w), 1.0)
        mom = float(cfg["center_momentum"])
        center = mom * extra["center"] + (1 - mom) * jnp.mean(t_global, axis=0)
        patch_center = mom * extra["patch_center"] + (1 - mom) * jnp.mean(t_patch, axis=(0, 1))
        return distill, tips, center, patch_center

    def loss(self, params: Any, extra: Any, batch: dict[str, jax.Array], rng: jax.Array,
             train: bool = True) -> LossOut:
        model, cfg = self.model(), self.loss_cfg

        def apply(method: Any, *args: Any, **kw: Any) -> Any:
            return model.apply({"params": params}, *args, method=method, rngs={"dropout": rng}, **kw)

        image, text = batch["image"], batch["text"]
        im = apply(SigLIP2.encode_image, image, train=train)
        (_, ztxt), aux = model.apply({"params": params}, None, text, train=train, rngs={"dropout": rng})
        total, metrics = self._contrastive(im["z"], ztxt, aux["t"], aux.get("b"), batch.get("concept"))
        metrics = dict(metrics, contrastive_loss=total)
        if float(cfg["locca_weight"]):
            loss, m = self._locca(apply, image, text, im["tokens"], rng, train)
            total, metrics = total + float(cfg["locca_weight"]) * loss, dict(metrics, **m)
        if float(cfg["distill_weight"]) or float(cfg["masked_weight"]):
            active = extra["updates"] >= self.start_step

            def off(_: Any) -> tuple[jax.Array, ...]:
                zero = jnp.zeros((), jnp.float32)
                return zero, zero, extra["center"], extra["patch_center"]

            distill, tips, center, patch_center = jax.lax.cond(
                active, lambda _: self._self_supervised(params, extra, image, jax.random.fold_in(rng, 7), train),
                off, None)
            total = total + float(cfg["distill_weight"]) * distill + float(cfg["masked_weight"]) * tips
            metrics = dict(metrics, distill_loss=distill, masked_loss=tips, distill_active=active.astype(jnp.float32))
            extra = dict(extra, center=center, patch_center=patch_center)
        return total, (metrics, extra)
