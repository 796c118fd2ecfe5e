"""Image-to-text objectives on the `Captioner` model: CapPa (captioning with parallel prediction) and the parts
CoCa shares with it (model from config, decoder inputs, caption loss, generation evaluators)."""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from vlm_jax.config import check_keys
from vlm_jax.data import image_text as datasets
from vlm_jax.data.tokenizer import EVAL_TEMPLATE
from vlm_jax.evals.generation import CaptionEvaluator, CaptionFns, ScoringClassifier
from vlm_jax.evals.prompted import PromptEvaluator
from vlm_jax.losses.generative import shift_right, token_cross_entropy
from vlm_jax.models import TextDecoder, ViT
from vlm_jax.models.captioner import Captioner
from vlm_jax.objectives.contrastive import check_module_fields
from vlm_jax.train.objective import Normalizers, Evaluator, LossOut, Objective, register
from vlm_jax.config_audit import merged

# Decoder fields the data decides (vocabulary, padding id, length) or the objective (CoCa's CLS token).
DATA_DECIDED = ("vocab_size", "pad_id", "max_len", "cls_token")
# evals: sets (dataset eval sets), templates (scoring prompts), captions / scoring (which evaluators),
# scoring_pairs (the scoring classifier scores at most this many image × class-prompt pairs per set, on evenly
# spaced query images; 0: all), decode options
# for generated captions (max_len 0: the data's text_len), examples (best / worst captions printed).
EVAL_DEFAULTS = dict(batch_size=64, sets=["emoji", "fashion_mnist"], templates=None, captions=True,
                     scoring=True, scoring_pairs=500_000, class_chunk=64, examples=3,
                     decode=dict(max_len=0, beam_size=1, length_penalty=0.6))
# The task evaluator's keys (prompted data): captions (generated answers against the references; off with scoring off
# too: no evaluator), scoring (the scoring classifier on tasks with classes), max_items (at most this many evenly
# spaced items per task; 0: all), and the generation options. The data's tasks decide sets and prompts.
PROMPT_EVAL_DEFAULTS = {**{k: EVAL_DEFAULTS[k] for k in ("batch_size", "captions", "scoring", "scoring_pairs",
                                                         "class_chunk", "examples", "decode")}, "max_items": 0}


def evals_config(config: ml_collections.ConfigDict, defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    """`config.evals` over `defaults` (the objective's `CONFIG_DEFAULTS["evals"]`, by default EVAL_DEFAULTS; unknown
    keys raise, naming the valid ones)."""
    defaults = EVAL_DEFAULTS if defaults is None else defaults
    check_keys(config.evals, {**defaults, "batch_size": 0}, "evals")
    out = merged(defaults, config.evals)
    check_keys(out["decode"], defaults["decode"], "evals.decode")
    out["decode"] = {**defaults["decode"], **out["decode"]}
    return out


class CaptionParts:
    """Mixin: the Captioner built from `config.model`, teacher-forced caption loss and generation evaluators."""

    config: ml_collections.ConfigDict
    data: Any
    trace_context: Any
    contrastive_heads = False  # CoCa: an embedding dimension, a CLS token in the decoder, t (and b)
    READS_PROMPTS = False  # the loss and evaluators take the data's task prompts (PaLI, the frozen-LM bridges)

    @property
    def eval_defaults(self) -> dict[str, Any]:
        """The evals keys this objective reads, with their defaults."""
        return type(self).CONFIG_DEFAULTS.get("evals", EVAL_DEFAULTS)

    def check_caption_model(self, config: ml_collections.ConfigDict, model_keys: tuple[str, ...]) -> None:
        """Unknown model / decoder keys raise, naming the valid ones."""
        check_keys(config.model, model_keys, "model")
        check_module_fields(config.model.get("image", {}), ViT, "model.image", ("pool_type", "num_classes"))
        check_module_fields(config.model.get("decoder", {}), TextDecoder, "model.decoder", DATA_DECIDED)

    @property
    def ids(self) -> dict[str, int]:
        """pad / eos / bos / mask ids and the decoder vocabulary of the dataset's tokenizer."""
        return self.data.special_ids

    def decoder_fields(self) -> dict[str, Any]:
        """`config.model.decoder` with the data's vocabulary, padding id and text length."""
        ids = self.ids
        return dict(self.config.model.decoder, vocab_size=ids["vocab"], pad_id=ids["pad"],
                    max_len=self.data.text_len)

    def caption_model(self) -> Captioner:
        """The Captioner from `config.model` with the data's vocabulary and text length."""
        m = self.config.model
        decoder = dict(self.decoder_fields(), cls_token=self.contrastive_heads)
        kw: dict[str, Any] = dict(image=dict(m.image), decoder=decoder, cap_queries=int(m.get("cap_queries", 0)))
        if self.contrastive_heads:
            kw.update(embed_dim=int(m.embed_dim), temperature_init=m.get("temperature_init", 10.0),
                      bias_init=m.get("bias_init", None))
        return Captioner(**kw)

    def init_batch(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
        """Images and target tokens, and each example's task prompt when the data is prompted."""
        spec = {"image": self.data.image_spec(batch_size), "text": jax.ShapeDtypeStruct(*self.data.text_spec(batch_size))}
        if self.prompted:
            spec["prompt"] = jax.ShapeDtypeStruct(*self.data.prompt_spec(batch_size))
        return spec

    def decoder_inputs(self, text: jax.Array) -> jax.Array:
        """Teacher forcing: [BOS, t0, …, t_{L-2}] for targets `text` [B, L]."""
        return shift_right(text, self.ids["bos"])

    def target_mask(self, batch: dict[str, jax.Array], rng: jax.Array, train: bool) -> jax.Array:
        """bool [B, L]: the target tokens the loss covers: every non-pad token (EOS included)."""
        return batch["text"] != self.ids["pad"]

    def normalizers(self, batch: dict[str, jax.Array], rng: jax.Array, train: bool = True) -> Normalizers:
        """The target tokens the caption loss averages over."""
        return {"tokens": jnp.sum(self.target_mask(batch, rng, train))}

    def caption_loss(self, logits: jax.Array, text: jax.Array, mask: jax.Array,
                     norm: Normalizers | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Mean cross-entropy over the `mask`ed target tokens, with `loss.label_smoothing` (over `norm`'s token
        count inside an accumulated step)."""
        count = None if norm is None else norm["tokens"]
        return token_cross_entropy(logits, text, mask, float(self.config.loss.get("label_smoothing", 0.0)), count)

    def train_data(self, batch_size: int, seed: int, process_index: int, process_count: int) -> Any:
        return self.data.train(batch_size, seed, process_index, process_count)

    @functools.cached_property
    def caption_fns(self) -> CaptionFns:
        """Jitted generation / scoring functions for the evaluators and `tools.caption`."""
        ev = evals_config(self.config, self.eval_defaults)
        dec = ev["decode"]
        return CaptionFns(self.model(), self.ids, self.data.tokenize, self.data.decode,
                          max_len=int(dec["max_len"]) or self.data.text_len, batch_size=int(ev["batch_size"]),
                          class_chunk=int(ev["class_chunk"]), beam_size=int(dec["beam_size"]),
                          length_penalty=float(dec["length_penalty"]), context=lambda: self.trace_context(),
                          tokenize_prompt=getattr(self.data, "tokenize_prompt", None))

    def check_data_and_evals(self, config: ml_collections.ConfigDict) -> None:
        """After `self.data` is built: prompted data only where the objective reads the prompts; the evals keys."""
        if self.prompted and not self.READS_PROMPTS:
            raise ValueError(f"objective {config.objective!r} reads no task prompt, and data "
                             f"{config.data.get('name')!r} gives every example one: train it with 'pali' or a "
                             "frozen-LM bridge ('vision_prefix', 'flamingo', 'visualgpt')")
        evals_config(config, self.eval_defaults)

    @property
    def prompted(self) -> bool:
        """Whether the data gives each example a task prompt (data "multitask", or "synthetic" with prompt_len)."""
        return bool(getattr(self.data, "prompt_len", 0))

    def task_evaluators(self) -> dict[str, Evaluator]:
        """Prompted data: every task's generated answers (exact match, caption metrics) and class scoring."""
        ev = evals_config(self.config, self.eval_defaults)
        if not ev["captions"]:
            if ev["scoring"]:
                raise ValueError("evals.captions=False with evals.scoring=True: the task evaluator scores classes "
                                 "beside the generated answers; set both False for no evaluation")
            return {}
        return {"tasks": PromptEvaluator(self.caption_fns, self.data.prompt_tasks(), scoring=bool(ev["scoring"]),
                                         scoring_pairs=int(ev["scoring_pairs"]), max_items=int(ev["max_items"]),
                                         examples=int(ev["examples"]))}

    def caption_evaluators(self) -> dict[str, Evaluator]:
        """Generated-caption metrics + perplexity, and the scoring classifier, on the data's eval sets."""
        ev = evals_config(self.config, self.eval_defaults)
        sets = self.data.eval_sets(list(ev["sets"]))
        out: dict[str, Evaluator] = {}
        if ev["captions"]:
            out["caption"] = CaptionEvaluator(self.caption_fns, sets, examples=int(ev["examples"]))
        if ev["scoring"]:
            templates = list(ev["templates"] or [EVAL_TEMPLATE])
            out["scoring"] = ScoringClassifier(self.caption_fns, sets, templates, int(ev["scoring_pairs"]))
        return out


@register("cappa")
class CapPaObjective(CaptionParts, Objective):
    """CapPa (Tschannen et al. 2023): with probability `loss.parallel_fraction` an example's decoder inputs are all
    MASK and it attends bidirectionally (parallel prediction); otherwise autoregressive captioning. 0 is plain
    captioning (Cap)."""

    CONFIG_DEFAULTS = {"loss": dict(parallel_fraction=0.75, label_smoothing=0.0), "evals": EVAL_DEFAULTS}
    MODEL_KEYS = ("image", "decoder", "cap_queries")
    NAFLEX = True  # the decoder's cross-attention (and the optional pooler) mask NaFlex padding

    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        self.check_caption_model(config, self.MODEL_KEYS)
        check_keys(config.loss, self.CONFIG_DEFAULTS["loss"], "loss")
        p = float(config.loss.get("parallel_fraction", 0.75))
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"loss.parallel_fraction must be in [0, 1], got {p}")
        self.data = datasets.get(config.data)
        self.check_data_and_evals(config)

    def model(self) -> nn.Module:
        return self.caption_model()

    def parallel_rows(self, rng: jax.Array, batch_size: int, train: bool) -> jax.Array:
        """bool [B]: the examples trained by parallel prediction this step (none at evaluation)."""
        p = float(self.config.loss.get("parallel_fraction", 0.75))
        if not train or p <= 0.0:
            return jnp.zeros((batch_size,), bool)
        return jax.random.bernoulli(jax.random.fold_in(rng, 1), p, (batch_size,))

    def masked_inputs(self, text: jax.Array, parallel: jax.Array) -> jax.Array:
        """Decoder inputs: teacher forcing, with every input of a parallel row replaced by MASK."""
        return jnp.where(parallel[:, None], jnp.int32(self.ids["mask"]), self.decoder_inputs(text))

    def loss(self, params: Any, extra: Any, batch: dict[str, jax.Array], rng: jax.Array, train: bool = True,
             norm: Normalizers | None = None) -> LossOut:
        text = batch["text"]
        parallel = self.parallel_rows(rng, text.shape[0], train)
        (_, _, logits), _ = self.model().apply({"params": params}, batch["image"], self.masked_inputs(text, parallel),
                                               train=train, parallel=parallel, rngs={"dropout": rng})
        loss, metrics = self.caption_loss(logits, text, self.target_mask(batch, rng, train), norm)
        return loss, (dict(metrics, parallel_fraction=jnp.mean(parallel.astype(jnp.float32))), extra)

    def build_evaluators(self) -> dict[str, Evaluator]:
        return self.caption_evaluators()
