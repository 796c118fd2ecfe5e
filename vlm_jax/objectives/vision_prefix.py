"""Captioning through a frozen language model with a trained vision prefix (Frozen, ClipCap, the LLaVA / MiniGPT-4
projection; `models/vision_prefix.py`): teacher-forced caption loss on every caption token after the prefix. The
LM comes from an `lm` run (`init_from.workdir`, its `decoder/…` parameters) and stays fixed (`optim.freeze`), so
the captions must use the LM's tokenizer (`data.tokenizer='text_corpus'`; synthetic token ids, for dry runs, have
no tokenizer). Flamingo (`models/flamingo.py`) shares it
all but the model: its image enters through gated cross-attention layers inside the LM instead of a prefix."""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from vlm_jax.config import check_keys
from vlm_jax.data.interleave import pack_interleaved
from vlm_jax.models.flamingo import RESAMPLER_DEFAULTS, Flamingo, VisualGPT
from vlm_jax.models.qformer import DATA_DECIDED, QFormer
from vlm_jax.models.vision_prefix import KIND_KEYS, MAPPER_DEFAULTS, MAPPERS, VisionPrefixLM
from vlm_jax.objectives.contrastive import check_module_fields
from vlm_jax.objectives.prefix_lm import PrefixLMObjective
from vlm_jax.objectives.captioning import EVAL_DEFAULTS
from vlm_jax.train.objective import Evaluator, LossOut, Normalizers, register


@register("vision_prefix")
class VisionPrefixObjective(PrefixLMObjective):
    """Plain captioning (no text in the bidirectional prefix) of an image prefix made by `model.mapper`."""

    READS_PROMPTS = True
    MODEL_KEYS = ("image", "decoder", "mapper", "lm_max_len")
    TRACED_FLOPS = True  # no analytic count: the traced step's FLOPs (frozen weight gradients skipped)
    NAFLEX = False  # the pooled mappers average the tokens; NaFlex padding would enter the mean
    # lm_max_len: the LM's position table (its run's data.text_len); captions use its first data.text_len positions

    CONFIG_DEFAULTS = {**PrefixLMObjective.CONFIG_DEFAULTS, "evals": {**EVAL_DEFAULTS, "max_items": 0}}
    # prompted data (data.name='multitask' with tokenizer='text_corpus'): the prompt before the answer, read
    # bidirectionally, and the task evaluator (max_items; sets and templates unused); otherwise captioning on
    # evals.sets (max_items unused)

    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        self.check_bridge(config.model)
        self.check_eval_keys(config.evals)
        if self.config.data.get("name") != "synthetic" and self.config.data.get("tokenizer") != "text_corpus":
            raise ValueError("the frozen LM reads its own tokenizer's ids: set data.tokenizer='text_corpus' (the "
                             "language model's SentencePiece), got data.tokenizer="
                             f"{self.config.data.get('tokenizer', 'sentencepiece')!r}")
        if self.lm_max_len < self.prompt_len + self.data.text_len:
            raise ValueError(f"model.lm_max_len ({self.lm_max_len}) is shorter than data.prompt_len + data.text_len "
                             f"({self.prompt_len} + {self.data.text_len}): the LM has no position for the last "
                             "tokens of a long answer")

    @property
    def prompt_len(self) -> int:
        """Task prompt tokens before each answer (0: plain captioning)."""
        return int(self.data.prompt_len) if self.prompted else 0

    def check_eval_keys(self, evals: ml_collections.ConfigDict) -> None:
        """Prompted data is evaluated per task: evals.sets and templates would go unread; captioning reads no
        max_items."""
        if self.prompted and (list(evals.get("sets") or []) or evals.get("templates") is not None):
            raise ValueError("prompted data is evaluated on its own tasks (data.tasks): set evals.sets=[] and leave "
                             f"evals.templates unset, got sets={list(evals.get('sets') or [])}, templates="
                             f"{evals.get('templates')}")
        if not self.prompted and int(evals.get("max_items", 0)):
            raise ValueError("evals.max_items limits a prompted dataset's task items; this data has no prompts")

    def check_bridge(self, model: ml_collections.ConfigDict) -> None:
        """The mapper section's keys and kind."""
        mapper = dict(model.get("mapper", {}))
        check_keys(mapper, MAPPER_DEFAULTS, "model.mapper")
        kind = mapper.get("kind", MAPPER_DEFAULTS["kind"])
        if kind not in MAPPERS:
            raise ValueError(f"model.mapper.kind must be one of {MAPPERS}, got {kind!r}")
        unused = sorted(k for k in mapper if k != "kind" and k not in KIND_KEYS[kind])
        if unused:
            raise ValueError(f"model.mapper.kind={kind!r} reads only {list(KIND_KEYS[kind])}; it would ignore "
                             f"{unused}")
        if kind == "qformer":
            check_module_fields(mapper.get("qformer", {}), QFormer, "model.mapper.qformer", DATA_DECIDED)

    @property
    def lm_max_len(self) -> int:
        """The LM's text positions (model.lm_max_len; 0: the data's prompt and text lengths)."""
        return int(self.config.model.get("lm_max_len", 0) or self.prompt_len + self.data.text_len)

    def decoder_fields(self) -> dict[str, Any]:
        """The LM's decoder fields: the data's vocabulary and padding id, the LM's position table."""
        return dict(super().decoder_fields(), max_len=self.lm_max_len)

    def model(self) -> nn.Module:
        m = self.config.model
        return VisionPrefixLM(image=dict(m.image), decoder=self.decoder_fields(), mapper=dict(m.get("mapper", {})),
                              text_len=self.data.text_len)

    def split_points(self, text: jax.Array, rng: jax.Array, train: bool) -> jax.Array:
        """No caption token joins the prefix: plain captioning, in training as at evaluation."""
        return jnp.zeros(text.shape[:1], jnp.int32)

    def loss(self, params: Any, extra: Any, batch: dict[str, jax.Array], rng: jax.Array, train: bool = True,
             norm: Normalizers | None = None) -> LossOut:
        """Teacher-forced caption loss on every caption token (EOS included) given the image (and the task
        prompt, or Flamingo's per-position `media` of an interleaved sequence)."""
        text = batch["text"]
        media = () if "media" not in batch else (batch["media"],)  # Flamingo's interleaved sequences
        (_, _, logits), _ = self.model().apply({"params": params}, batch["image"], self.decoder_inputs(text), *media,
                                               prompt=batch.get("prompt"), train=train, rngs={"dropout": rng})
        loss, metrics = self.caption_loss(logits, text, self.target_mask(batch, rng, train), norm)
        return loss, (metrics, extra)

    def build_evaluators(self) -> dict[str, Evaluator]:
        """Per-task answers (exact match, caption metrics) for prompted data, else captions and class scoring."""
        return self.task_evaluators() if self.prompted else self.caption_evaluators()


@register("flamingo")
class FlamingoObjective(VisionPrefixObjective):
    """Captioning through the frozen LM with a Perceiver resampler and tanh-gated cross-attention layers."""

    MODEL_KEYS = ("image", "decoder", "resampler", "gated_every", "lm_max_len", "interleave")
    # interleave: pairs per training sequence (1: single pairs; m: <image> caption … m times, `data/interleave.py`;
    # batch_size counts sequences); evaluation captions single images either way

    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        self.interleave = int(config.model.get("interleave", 1))
        if self.interleave < 1:
            raise ValueError(f"model.interleave must be >= 1 (image–caption pairs per sequence), got "
                             f"{self.interleave}")
        if self.interleave > 1 and self.prompted:
            raise ValueError(f"model.interleave={self.interleave} packs captions into sequences; prompted data "
                             "(task prompts) trains single image–prompt–answer examples: set model.interleave=1")
        if self.interleave * self.data.text_len > self.lm_max_len:
            raise ValueError(f"model.interleave={self.interleave} captions of data.text_len={self.data.text_len} "
                             f"tokens need {self.interleave * self.data.text_len} LM positions; model.lm_max_len is "
                             f"{self.lm_max_len}")

    def check_bridge(self, model: ml_collections.ConfigDict) -> None:
        """The resampler section's keys; gated_every >= 1 (a Flamingo without gated layers never sees the image)."""
        check_keys(dict(model.get("resampler", {})), RESAMPLER_DEFAULTS, "model.resampler")
        every = int(model.get("gated_every", 1))
        if every < 1:
            raise ValueError(f"model.gated_every must be >= 1 (a gated layer before every n-th LM block), got {every}")

    def init_batch(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
        """Single pairs, or `interleave` images and their packed captions (and each position's image) per row."""
        spec = super().init_batch(batch_size)
        m = self.interleave
        if m == 1:
            return spec
        image, text = spec["image"], spec["text"]
        return {"image": jax.ShapeDtypeStruct((batch_size, m, *image.shape[1:]), image.dtype),
                "text": jax.ShapeDtypeStruct((batch_size, m * text.shape[1]), text.dtype),
                "media": jax.ShapeDtypeStruct((batch_size, m * text.shape[1]), jnp.int32)}

    def train_data(self, batch_size: int, seed: int, process_index: int, process_count: int) -> Any:
        """The data's pairs, `interleave` of them packed into each sequence."""
        pairs = self.data.train(batch_size * self.interleave, seed, process_index, process_count)
        if self.interleave == 1:
            return pairs
        return pairs.map(functools.partial(pack_interleaved, m=self.interleave, pad_id=self.ids["pad"]))

    def model(self) -> nn.Module:
        m = self.config.model
        return Flamingo(image=dict(m.image), decoder=self.decoder_fields(), resampler=dict(m.get("resampler", {})),
                        gated_every=int(m.get("gated_every", 1)), text_len=self.data.text_len)


@register("visualgpt")
class VisualGPTObjective(VisionPrefixObjective):
    """Captioning through the LM with VisualGPT's self-resurrecting fusion of cross-attention in every block."""

    MODEL_KEYS = ("image", "decoder", "srau_threshold", "lm_max_len")

    def check_bridge(self, model: ml_collections.ConfigDict) -> None:
        """The gates' threshold τ is in (0, 0.5): at 0.5 or above no dimension can pass either gate."""
        tau = float(model.get("srau_threshold", 0.2))
        if not 0.0 < tau < 0.5:
            raise ValueError(f"model.srau_threshold must be in (0, 0.5), got {tau}")

    def model(self) -> nn.Module:
        m = self.config.model
        return VisualGPT(image=dict(m.image), decoder=self.decoder_fields(),
                         srau_threshold=float(m.get("srau_threshold", 0.2)), text_len=self.data.text_len)
