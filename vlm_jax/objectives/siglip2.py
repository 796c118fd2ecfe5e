"""The SigLIP 2 training recipe (Tschannen et al. 2025) on the sigmoid objective: SigLIP + a LocCa decoder loss
(captioning on the row's own image; referring expression and grounded captioning on scenes composed from the
batch) from the start, and for the last part of training SILC self-distillation (an EMA teacher sees the full
image, the student low-resolution local crops) and TIPS masked prediction of the teacher's patch features. Each
part has its own weight (0: off, and its parameters and state are not built)."""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from vlm_jax.config import check_keys
from vlm_jax.data.scenes import compose_scenes
from vlm_jax.evals.embedder import Embedder
from vlm_jax.evals.locca import LoccaEvaluator, LoccaVocab, greedy_decode, subsample
from vlm_jax.evals.probe import PROBE_DEFAULTS
from vlm_jax.evals.standard import SUITE_DEFAULTS
from vlm_jax.losses.generative import token_cross_entropy
from vlm_jax.losses.locca import BOX_TOKENS, box_bins, grounding_rows, task_sequences
from vlm_jax.losses.masked import random_masking
from vlm_jax.models.siglip2 import TEACHER, DistillHead, SigLIP2, image_params_at
from vlm_jax.models.text import TextTransformer
from vlm_jax.models.vit import ViT
from vlm_jax.objectives import teacher as ema_teacher
from vlm_jax.objectives.contrastive import LOSS_KEYS, ContrastiveObjective, Towers, check_module_fields
from vlm_jax.objectives.views import local_geometry, random_crops
from vlm_jax.train.objective import Evaluator, Normalizers, register
from vlm_jax.config_audit import merged

# Paper defaults as we read Tschannen et al. 2025: decoder loss from the start (weight 1); self-distillation and
# masked prediction in the last 20% of training with weights 1 and 0.25; SILC's fixed EMA momentum; DINO's
# temperatures and centre momentum. Local crops (SILC / DINO): `local_crops` random square crops of
# `crop_fraction` of the side, resized to `local_size` of the input side (a lower resolution: fewer patches; the
# learned position embedding is resampled to the smaller grid); TIPS hides `masked_ratio` of the student's patches
# behind the mask token.
LOSS_DEFAULTS = dict(name="sigmoid", impl="full", chunk_size=0, temperature_max=0.0,
                     locca_weight=1.0, distill_weight=1.0, masked_weight=0.25, distill_start=0.8, ema=0.996,
                     local_crops=2, crop_fraction=0.5, local_size=0.5, masked_ratio=0.5, teacher_temperature=0.04,
                     student_temperature=0.1, center_momentum=0.9, box_bins=32, scene_scale=0.5)
MODEL_KEYS = ("image", "text", "decoder", "head", "embed_dim", "temperature_init", "bias_init")
# evals: the zero-shot sets and probes (as SigLIP), and the LocCa decoder's tasks (evals.locca) on held-out images:
# locca_sets (the data's eval sets with reference captions, e.g. "emoji/cross"; [] none), locca_images (at most
# this many evenly spaced images per set; 0: all)
EVAL_DEFAULTS = dict(PROBE_DEFAULTS, **SUITE_DEFAULTS, locca_sets=["emoji/cross"], locca_images=0)
POOLED = ("gap", "map", "tok")  # image pooling that gives one embedding per image


def soft_cross_entropy(teacher_probs: jax.Array, student_logits: jax.Array, temperature: float) -> jax.Array:
    """−Σ p_teacher · log softmax(student / τ) over the last axis (per row)."""
    return -jnp.sum(teacher_probs * jax.nn.log_softmax(student_logits / temperature, axis=-1), axis=-1)


@register("siglip2")
class SigLIP2Objective(ContrastiveObjective):
    """SigLIP + LocCa decoder loss + (late) SILC self-distillation and TIPS masked prediction."""

    NAFLEX = False  # LocCa, SILC and TIPS read image tokens
    DEFAULT_BIAS_INIT = -10.0  # SigLIP's initial logit bias

    CONFIG_DEFAULTS = {"loss": LOSS_DEFAULTS, "evals": EVAL_DEFAULTS}

    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        loss = merged(LOSS_DEFAULTS, config.loss)
        self.loss_cfg = loss
        self.start_step = int(round(float(loss["distill_start"]) * int(config.get("total_steps", 0))))
        ids = self.data.special_ids
        self.text_vocab = ids["vocab"]
        self.task_ids = (self.text_vocab, self.text_vocab + 1, self.text_vocab + 2)
        self.bin_offset = self.text_vocab + 3
        self.locca_on = bool(float(loss["locca_weight"]))
        self.distill_on = bool(float(loss["distill_weight"]))
        self.masked_on = bool(float(loss["masked_weight"]))
        self.ssl_on = self.distill_on or self.masked_on
        s, patch = self.data.image_size, tuple(ViT(**dict(config.model.image))._cfg()["patch_size"])
        self.grid = (s // patch[0], s // patch[1])
        self.local_side = int(round(float(loss["local_size"]) * s))
        self.local_grid = (self.local_side // patch[0], self.local_side // patch[1])
        if self.distill_on:
            self.grid, self.local_side, self.local_grid = local_geometry(s, patch, loss["local_size"])

    def check_config(self, config: ml_collections.ConfigDict) -> None:
        check_keys(config.model, MODEL_KEYS, "model")
        check_keys(config.loss, {**LOSS_DEFAULTS, **{k: 0 for k in LOSS_KEYS}}, "loss")
        check_keys(config.evals, {**EVAL_DEFAULTS, "batch_size": 0, "sets": 0, "templates": 0, "languages": 0},
                   "evals")
        check_module_fields(config.model.get("image", {}), ViT, "model.image", ("mask_token",))
        check_module_fields(config.model.get("text", {}), TextTransformer, "model.text")
        check_keys(config.model.get("decoder", {}), ("width", "depth", "mlp_dim", "num_heads", "dtype_mm"),
                   "model.decoder")
        check_module_fields(config.model.get("head", {}), DistillHead, "model.head")
        pool = config.model.image.get("pool_type", "gap")
        if pool not in POOLED:
            raise ValueError(f"SigLIP 2 needs one image embedding per image: model.image.pool_type must be one of "
                             f"{POOLED}, got {pool!r}")

    def model(self) -> nn.Module:
        m, ids = self.config.model, self.data.special_ids
        text = dict(m.text)
        if not text.get("vocab_size"):
            text["vocab_size"] = self.data.vocab_size
        bins = int(self.loss_cfg["box_bins"])
        return SigLIP2(image=dict(m.image), text=text,
                       decoder=dict(m.get("decoder", {})) if self.locca_on else None,
                       head=dict(m.get("head", {})) if self.ssl_on else None,
                       embed_dim=int(m.embed_dim), decoder_vocab=ids["vocab"] + 3 + bins,
                       decoder_len=self.data.text_len + 1 + BOX_TOKENS, pad_id=ids["pad"], mask_token=self.masked_on,
                       temperature_init=m.get("temperature_init", 10.0), bias_init=m.get("bias_init", self.DEFAULT_BIAS_INIT))

    def flop_phases(self) -> tuple[int, ...]:
        """Before and from the step the self-supervised losses switch on (one phase without them, or from step 0)."""
        return (0, self.start_step) if self.ssl_on and self.start_step > 0 else (0,)

    def forward_flops(self, batch: dict[str, Any], phase: int = 0) -> dict[str, float]:
        """SigLIP's towers; LocCa's scene forward (grounding rows only) and decoder; and self-distillation (student
        local crops at their lower resolution) and masked prediction (the student's masked view; the teacher's
        forward only) in the phase that runs them (`flop_phases`)."""
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
        # the scenes' pooling head and projection, which the loss does not read, are traced forward only; inside the
        # self-supervised branch (a lax.cond, whose branches JAX prunes of unused outputs) such parts are not traced
        # at all: the masked view's and the teacher's contrastive projection, and the pooling head of a view whose
        # pooled feature is not read
        if self.locca_on:
            scenes = len(grounding_rows(b))
            out["patch_embed"] += scenes * vit["patch_embed"]
            out["image"] += scenes * vit["encoder"]
            out["forward_only"] += scenes * vit["head"]
            dec = {**model.decoder, "vocab_size": model.decoder_vocab, "cross_attention": True}
            out["decoder"] = b * fl.text_decoder(dec, model.decoder_len, vit["tokens"], d)
        if self.ssl_on:
            hd = {"hidden": 256, "bottleneck": 64, "prototypes": 256, **model.head}
            head = fl.dense(1, d, hd["hidden"]) + fl.dense(1, hd["hidden"], hd["hidden"]) + \
                fl.dense(1, hd["hidden"], hd["bottleneck"]) + fl.dense(1, hd["bottleneck"], hd["prototypes"])
            share = float(self.flop_phases()[phase] >= self.start_step)  # the phase runs them, or not at all
            patches = vit["tokens"] - model.prefix_tokens
            crops = int(cfg["local_crops"]) if self.distill_on else 0
            local = fl.vit(image, (self.local_side, self.local_side), ch)
            embedding = fl.dense(1, d, model.embed_dim)  # the contrastive projection inside each view's head
            masked = 1 if self.masked_on else 0  # the student's masked view
            out["patch_embed"] += share * b * (crops * local["patch_embed"] + masked * vit["patch_embed"])
            out["self_supervised"] = share * b * (crops * (local["encoder"] + local["head"] - embedding + head)
                                                  + masked * (vit["encoder"] + patches * head))
            # the teacher: the full image, its pooled feature (SILC) and the projection of it and of the patches (TIPS)
            teacher_pool = vit["head"] - embedding if self.distill_on else 0.0
            out["forward_only"] += share * b * (vit["patch_embed"] + vit["encoder"] + teacher_pool
                                                + (int(self.distill_on) + masked * patches) * head)
        return out

    def init_extra(self, params: Any) -> Any:
        """With self-distillation or masked prediction: the EMA teacher (a copy of the student's image tower and
        projection head, boxed with the student's logical axis names so it is sharded like the student), DINO's
        two centres, and the count of applied updates (which switches them on); else nothing."""
        if not self.ssl_on:
            return {}
        k = int(self.config.model.get("head", {}).get("prototypes", 256))
        teacher = ema_teacher.init_teacher(params, ema_teacher.param_names(self.model(), self.init_batch(2)), TEACHER)
        return {"teacher": teacher, "center": jnp.zeros((k,), jnp.float32),
                "patch_center": jnp.zeros((k,), jnp.float32), "updates": jnp.zeros((), jnp.int32)}

    def after_update(self, params: Any, extra: Any) -> Any:
        """teacher ← m · teacher + (1 − m) · student, after every applied update."""
        if not self.ssl_on:
            return extra
        teacher = ema_teacher.ema_update(extra["teacher"], params, float(self.loss_cfg["ema"]))
        return dict(extra, teacher=teacher, updates=extra["updates"] + 1)

    def _locca_tasks(self, rng: jax.Array, b: int) -> jax.Array:
        """Task index per row (0 cap; the grounding rows REF or GCAP at random)."""
        rows = grounding_rows(b)
        task = jnp.zeros((b,), jnp.int32)
        if len(rows):
            task = task.at[rows].set(jax.random.randint(jax.random.fold_in(rng, 6), (len(rows),), 1, 3))
        return task

    def normalizers(self, batch: dict[str, jax.Array], rng: jax.Array, train: bool = True) -> Normalizers:
        """{"locca_tokens": the decoder's target count} (the other terms are means over rows or a fixed share of
        patches, equal in every micro-batch)."""
        if not self.locca_on:
            return {}
        text = batch["text"]
        task = self._locca_tasks(rng, text.shape[0])
        boxes = jnp.zeros((text.shape[0], BOX_TOKENS), jnp.int32)  # the box values do not move the targets
        _, pred = task_sequences(text, boxes, task, self.data.tokenizer.eos_id, self.data.special_ids["pad"],
                                 self.task_ids)
        return {"locca_tokens": jnp.sum(pred[:, 1:].astype(jnp.float32))}

    def _locca(self, apply: Any, image: jax.Array, text: jax.Array, image_tokens: jax.Array, rng: jax.Array,
               train: bool, count: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Decoder loss: CAP rows read their own image's tokens; the grounding rows (`grounding_rows`, REF or
        GCAP at random) read a scene composed for them alone. `count`: the target count it divides by."""
        ids, cfg = self.data.special_ids, self.loss_cfg
        b = image.shape[0]
        rows = grounding_rows(b)
        task = self._locca_tasks(rng, b)
        context, boxes = image_tokens, jnp.zeros((b, 4), jnp.float32)
        if len(rows):
            scenes, scene_boxes, _ = compose_scenes(jax.random.fold_in(rng, 5), image, float(cfg["scene_scale"]), rows)
            scene_tokens = apply(SigLIP2.encode_image, scenes, train=train, key=jax.random.fold_in(rng, 8))["tokens"]
            context = context.at[rows].set(scene_tokens.astype(context.dtype))
            boxes = boxes.at[rows].set(scene_boxes)
        bins = box_bins(boxes, int(cfg["box_bins"])) + self.bin_offset
        seq, pred = task_sequences(text, bins, task, self.data.tokenizer.eos_id, ids["pad"], self.task_ids)
        logits = apply(SigLIP2.decode, seq[:, :-1], context, train, key=jax.random.fold_in(rng, 9))
        loss, m = token_cross_entropy(logits, seq[:, 1:], pred[:, 1:], count=count)
        return loss, {"locca_loss": loss, "locca_accuracy": m["token_accuracy"], "locca_tokens": m["tokens"]}

    def _self_supervised(self, params: Any, extra: Any, image: jax.Array, rng: jax.Array,
                         train: bool) -> tuple[jax.Array, ...]:
        """(SILC loss, TIPS loss, new centre, new patch centre, hidden patches); the teacher (no dropout) is a
        constant to autodiff. Student views draw their dropout from `rng`."""
        cfg, model = self.loss_cfg, self.model()
        teacher_params = ema_teacher.with_teacher(params, extra["teacher"])
        teacher = lambda method, *a, **k: model.apply({"params": teacher_params}, *a, method=method, **k)  # noqa: E731

        def student(method: Any, *a: Any, p: Any = params, key: int = 0, **k: Any) -> Any:
            return model.apply({"params": p}, *a, method=method, rngs={"dropout": jax.random.fold_in(rng, key)}, **k)

        full = teacher(SigLIP2.encode_image, image)
        tt, ts = float(cfg["teacher_temperature"]), float(cfg["student_temperature"])
        mom = float(cfg["center_momentum"])
        zero = jnp.zeros((), jnp.float32)
        distill, tips, hidden_count = zero, zero, zero
        center, patch_center = extra["center"], extra["patch_center"]
        if self.distill_on:
            t_global = jax.lax.stop_gradient(teacher(SigLIP2.project, full["pooled"]))
            p_global = jax.nn.softmax((t_global - extra["center"]) / tt, axis=-1)
            local_params = image_params_at(params, self.grid, self.local_grid)
            n_crops = int(cfg["local_crops"])
            for i in range(n_crops):
                crops = random_crops(jax.random.fold_in(rng, 10 + i), image, float(cfg["crop_fraction"]),
                                     self.local_side)
                local = student(SigLIP2.encode_image, crops, p=local_params, key=30 + i, train=train)
                distill += jnp.mean(soft_cross_entropy(p_global, student(SigLIP2.project, local["pooled"]), ts))
            distill = distill / max(n_crops, 1)
            center = mom * extra["center"] + (1 - mom) * jnp.mean(t_global, axis=0)
        if self.masked_on:
            t_patch = jax.lax.stop_gradient(teacher(SigLIP2.project, full["patches"]))
            p_patch = jax.nn.softmax((t_patch - extra["patch_center"]) / tt, axis=-1)
            n = full["patches"].shape[1]
            _, hidden = random_masking(jax.random.fold_in(rng, 20), image.shape[0], n, float(cfg["masked_ratio"]))
            masked = student(SigLIP2.encode_image, image, patch_mask=hidden, key=21, train=train)
            per_patch = soft_cross_entropy(p_patch, student(SigLIP2.project, masked["patches"]), ts)
            w = hidden.astype(jnp.float32)
            hidden_count = jnp.sum(w)
            tips = jnp.sum(per_patch * w) / jnp.maximum(hidden_count, 1.0)
            patch_center = mom * extra["patch_center"] + (1 - mom) * jnp.mean(t_patch, axis=(0, 1))
        return distill, tips, center, patch_center, hidden_count

    def _towers(self, params: Any, extra: Any, batch: dict[str, jax.Array], rng: jax.Array, train: bool = True,
                norm: Normalizers | None = None) -> Towers:
        """SigLIP's embeddings, and as local terms (weighted) LocCa's decoder loss and, once switched on, SILC and
        TIPS with the new DINO centres in `extra`: so GradCache (grad_accum_steps > 1) runs every term."""
        model, cfg = self.model(), self.loss_cfg

        def apply(method: Any, *args: Any, key: jax.Array = rng, **kw: Any) -> Any:
            return model.apply({"params": params}, *args, method=method, rngs={"dropout": key}, **kw)

        image, text = batch["image"], batch["text"]
        im = apply(SigLIP2.encode_image, image, train=train)
        (_, ztxt), aux = model.apply({"params": params}, None, text, train=train, rngs={"dropout": rng})
        local, metrics = jnp.zeros((), jnp.float32), {}
        if self.locca_on:
            count = None if norm is None else norm["locca_tokens"]
            loss, m = self._locca(apply, image, text, im["tokens"], rng, train, count)
            local, metrics = local + float(cfg["locca_weight"]) * loss, dict(metrics, **m)
        if self.ssl_on:
            active = extra["updates"] >= self.start_step

            def off(_: Any) -> tuple[jax.Array, ...]:
                zero = jnp.zeros((), jnp.float32)
                return zero, zero, extra["center"], extra["patch_center"], zero

            distill, tips, center, patch_center, hidden = jax.lax.cond(
                active, lambda _: self._self_supervised(params, extra, image, jax.random.fold_in(rng, 7), train),
                off, None)
            local = local + float(cfg["distill_weight"]) * distill + float(cfg["masked_weight"]) * tips
            metrics = dict(metrics, distill_loss=distill, masked_loss=tips, masked_tokens=hidden,
                           distill_active=active.astype(jnp.float32))
            extra = dict(extra, center=center, patch_center=patch_center)
        return Towers(im["z"], ztxt, aux["t"], aux.get("b"), local, metrics, extra)

    @functools.cached_property
    def locca_decoder(self) -> Embedder:
        """Batched, jitted greedy LocCa decoding: (params, images, prompts, prompt lengths, allowed ids) → tokens."""
        model, ids = self.model(), self.data.special_ids

        def decode(params: Any, inputs: tuple[jax.Array, ...]) -> jax.Array:
            images, prompts, lengths, allowed = inputs
            context = model.apply({"params": params}, images, method=SigLIP2.encode_image)["tokens"]
            def logits(seq: jax.Array) -> jax.Array:
                return model.apply({"params": params}, seq[:, :-1], context, method=SigLIP2.decode)

            return greedy_decode(logits, prompts, lengths, allowed, ids["eos"], ids["pad"])

        return Embedder(decode, None, None, batch_size=int(self.config.evals.get("batch_size", 256)),
                        context=lambda: self.trace_context())

    def locca_evaluator(self) -> LoccaEvaluator | None:
        """The LocCa decoder's evaluator on `evals.locca_sets` (None without a decoder or sets)."""
        evals = merged(EVAL_DEFAULTS, self.config.evals)
        names = list(evals["locca_sets"] or [])
        if not self.locca_on or not names:
            return None
        sets = self.data.eval_sets(sorted({n.split("/")[0] for n in names}))
        unknown = [n for n in names if n not in sets or not sets[n].references]
        if unknown:
            valid = [k for k, v in sets.items() if v.references]
            raise ValueError(f"evals.locca_sets {unknown} are not eval sets with reference captions; valid: {valid}")
        vocab = LoccaVocab(task_ids=self.task_ids, bin_offset=self.bin_offset, bins=int(self.loss_cfg["box_bins"]),
                           text_vocab=self.data.vocab_size, eos=self.data.tokenizer.eos_id,
                           pad=self.data.special_ids["pad"])
        return LoccaEvaluator(lambda params, *inputs: self.locca_decoder.apply(params, *inputs),
                              {n: subsample(sets[n], int(evals["locca_images"])) for n in names}, vocab,
                              self.data.tokenize, self.data.decode, float(self.loss_cfg["scene_scale"]))

    def build_evaluators(self) -> dict[str, Evaluator]:
        """SigLIP's zero-shot and probe evaluators, and with a decoder the LocCa tasks on held-out images."""
        locca = self.locca_evaluator()
        return {**super().build_evaluators(), **({"locca": locca} if locca is not None else {})}
