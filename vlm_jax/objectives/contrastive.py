"""CLIP (InfoNCE) and SigLIP (sigmoid) two-tower objectives on image–text pairs."""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from vlm_jax.config import check_keys
from vlm_jax.config_audit import merged
from vlm_jax.evals.embedder import Embedder
from vlm_jax.evals.probe import PROBE_DEFAULTS, probe_evaluator
from vlm_jax.evals.standard import SUITE_DEFAULTS
from vlm_jax.losses import get_contrastive_loss
from vlm_jax.losses.contrastive import LABEL_LOSSES
from vlm_jax.losses.distributed import contrastive_loss
from vlm_jax.models import TwoTower, ViT
from vlm_jax.models.two_tower import TEXT_TOWERS
from vlm_jax.data import image_text as datasets
from vlm_jax.train.microbatch import merge_microbatches, split_microbatches
from vlm_jax.train.objective import (Evaluator, LossOut, Normalizers, Objective, mean_normalizers, register,
                                     sum_counts)



class Towers(NamedTuple):
    """One (micro-)batch through a contrastive model: unit embeddings, logit scale t and bias b (None without),
    the weighted sum of the loss terms beside the contrastive one, their metrics, and the new `extra`; and what else
    the contrastive loss reads: `rows`, float arrays with one row per example (e.g. a teacher's embeddings, token
    features), gathered over micro-batches like the embeddings, and `shared`, learned parameters the loss reads
    directly (scalars such as OTTER's distillation temperature, or arrays), the same in every micro-batch like t."""
    zimg: jax.Array
    ztxt: jax.Array
    t: jax.Array
    b: jax.Array | None
    local: jax.Array
    metrics: dict[str, jax.Array]
    extra: Any
    rows: dict[str, jax.Array] = {}
    shared: dict[str, jax.Array] = {}


MODEL_KEYS = ("image", "text", "embed_dim", "temperature_init", "bias_init", "text_tower")
LOSS_KEYS = ("name", "impl", "chunk_size", "temperature_max", "contrastive_smoothing")
# Paper settings by short name: loss, initial temperature (and bias), Adam b2 (CLIP: Radford et al. 2021;
# SigLIP: Zhai et al. 2023; UniCL, CLIP's settings with label-sharing positives: Yang et al. 2022).
LOSS_PRESETS = {
    "clip": dict(name="infonce", temperature_init=1 / 0.07, bias_init=None, b2=0.98),
    "siglip": dict(name="sigmoid", temperature_init=10.0, bias_init=-10.0, b2=0.95),
    "unicl": dict(name="unicl", temperature_init=1 / 0.07, bias_init=None, b2=0.98),  # Yang et al. 2022
}


def loss_preset(name: str) -> dict:
    """LOSS_PRESETS[name], naming the valid ones on error."""
    if name not in LOSS_PRESETS:
        raise ValueError(f"loss must be one of {sorted(LOSS_PRESETS)}, got {name!r}")
    return LOSS_PRESETS[name]


def apply_loss_preset(config: ml_collections.ConfigDict, name: str) -> dict:
    """Sets `config.loss` and the model's initial temperature (and bias) from a preset; returns the preset."""
    preset = loss_preset(name)
    config.model.temperature_init = preset["temperature_init"]
    if preset["bias_init"] is not None:
        config.model.bias_init = preset["bias_init"]
    config.loss = dict(name=preset["name"])
    return preset


def contrastive_loss_fn(loss: ml_collections.ConfigDict) -> Any:
    """The loss function `loss.name` selects; a label loss (UniCL) only with the full implementation."""
    name = loss.get("name", "infonce")
    if name not in LABEL_LOSSES:
        return get_contrastive_loss(name)
    if loss.get("impl", "full") != "full" or loss.get("chunk_size", 0):
        raise ValueError(f"loss {name!r} runs with impl='full' and no chunk_size; got "
                         f"impl={loss.get('impl')!r}, chunk_size={loss.get('chunk_size')}")
    return LABEL_LOSSES[name]


def _check_bias(loss_name: str, has_bias: bool) -> None:
    """A learned logit bias belongs to the sigmoid loss alone: InfoNCE's softmax cancels it, and the full InfoNCE
    kernel's fourth argument is label smoothing, so a bias passed there would silently become smoothing."""
    if has_bias and loss_name != "sigmoid":
        raise ValueError(f"model.bias_init is set but loss.name is {loss_name!r}: a learned logit bias is read only "
                         f"by the sigmoid loss; unset model.bias_init or use loss.name='sigmoid'")
    if loss_name == "sigmoid" and not has_bias:
        raise ValueError("loss.name='sigmoid' needs a learned logit bias: set model.bias_init (SigLIP: -10)")


def check_module_fields(section: Any, module: type, prefix: str, exclude: tuple[str, ...] = ()) -> None:
    """Raises on keys that are not settable fields of the Flax module (less `exclude`), naming the valid ones."""
    fields = tuple(f.name for f in dataclasses.fields(module) if f.name not in ("parent", "name", *exclude))
    check_keys(dict(section), fields, prefix)


@register("contrastive")
class ContrastiveObjective(Objective):
    """Two towers + a contrastive loss (`config.loss.name`: infonce | sigmoid)."""

    NAFLEX = True  # the loss reads only pooled embeddings (CLIP, SigLIP, UniCL, LiT)

    # impl: "full" (B×B logits) | "gather" (b×B per device) | "ring" (b×b per device, ppermute ring);
    # chunk_size: rows per in-device tile (0: none); GradCache is grad_accum_steps > 1 (value_and_grad);
    # temperature_max: the logit scale t is clamped to at most this after every update (CLIP: 100; 0: unbounded).
    # evals: the zero-shot sets (data.evaluators), the image-only probes (PROBE_DEFAULTS; off unless probe_sets) and
    # the standard benchmark suite (SUITE_DEFAULTS; off unless suite names datasets)
    # contrastive_smoothing: InfoNCE's targets (1 − ε) on the pair and ε spread over the batch (ALIGN's label
    # smoothing, 0.1)
    CONFIG_DEFAULTS = {"loss": dict(name="infonce", impl="full", chunk_size=0, temperature_max=100.0,
                                    contrastive_smoothing=0.0),
                       "evals": {**PROBE_DEFAULTS, **SUITE_DEFAULTS}}

    # Whether `_contrastive` honours loss.contrastive_smoothing (objectives with a loss of their own set False)
    CONTRASTIVE_SMOOTHING: bool = True
    # An objective's own loss keys with their defaults (accepted beside LOSS_KEYS, added to CONFIG_DEFAULTS["loss"],
    # read through `self.cfg`) and its own model keys (accepted beside MODEL_KEYS)
    OWN_LOSS_DEFAULTS: dict[str, Any] = {}
    OWN_MODEL_KEYS: tuple[str, ...] = ()
    # the logit bias the model creates when model.bias_init is unset (None: no bias parameter)
    DEFAULT_BIAS_INIT: float | None = None
    # Set (to the reason) by objectives whose loss needs InfoNCE over the whole batch in one piece
    WHOLE_BATCH_INFONCE: str = ""
    # Set (to the reason) by objectives whose step draws or updates state over the whole batch: no GradCache
    WHOLE_BATCH_STEP: str = ""

    def __init_subclass__(cls, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("OWN_LOSS_DEFAULTS")
        if own:
            cls.CONFIG_DEFAULTS = {**cls.CONFIG_DEFAULTS, "loss": dict(cls.CONFIG_DEFAULTS["loss"], **own)}

    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        self.cfg = merged(self.CONFIG_DEFAULTS["loss"], config.loss)  # the loss section with its defaults
        self.check_config(config)
        self._check_smoothing(config)
        _check_bias(self.cfg.get("name", "infonce"), config.model.get("bias_init", self.DEFAULT_BIAS_INIT) is not None)
        self.loss_fn = contrastive_loss_fn(config.loss)
        self.data = datasets.get(config.data)

    def _check_smoothing(self, config: ml_collections.ConfigDict) -> None:
        """loss.contrastive_smoothing only where InfoNCE runs whole (name 'infonce', impl 'full', no chunks)."""
        smoothing = float(config.loss.get("contrastive_smoothing", 0.0) or 0.0)
        if not smoothing:
            return
        if not self.CONTRASTIVE_SMOOTHING:
            raise ValueError(f"objective {config.get('objective')!r} has a contrastive loss of its own that does not "
                             f"smooth targets: unset loss.contrastive_smoothing ({smoothing})")
        if config.loss.get("name", "infonce") != "infonce" or config.loss.get("impl", "full") != "full" \
                or config.loss.get("chunk_size", 0):
            raise ValueError(f"loss.contrastive_smoothing {smoothing} smooths InfoNCE's targets over the whole batch: "
                             f"it needs loss.name 'infonce' and loss.impl 'full' with no chunk_size, got "
                             f"name={config.loss.get('name')!r}, impl={config.loss.get('impl')!r}")
        if not 0.0 < smoothing < 1.0:
            raise ValueError(f"loss.contrastive_smoothing must be in [0, 1), got {smoothing}")

    def check_config(self, config: ml_collections.ConfigDict) -> None:
        """Raises on unknown model / loss keys, naming the valid ones."""
        check_keys(config.model, (*MODEL_KEYS, *self.OWN_MODEL_KEYS), "model")
        self.check_loss_and_step(config)
        check_module_fields(config.model.get("image", {}), ViT, "model.image")
        tower = config.model.get("text_tower", "transformer")
        if tower not in TEXT_TOWERS:
            raise ValueError(f"model.text_tower must be one of {sorted(TEXT_TOWERS)}, got {tower!r}")
        check_module_fields(config.model.get("text", {}), TEXT_TOWERS[tower], "model.text")

    def check_loss_and_step(self, config: ml_collections.ConfigDict) -> None:
        """The loss section's keys, and what WHOLE_BATCH_INFONCE / WHOLE_BATCH_STEP refuse (any model)."""
        check_keys(config.loss, (*LOSS_KEYS, *self.OWN_LOSS_DEFAULTS), "loss")
        name, impl = config.loss.get("name", "infonce"), config.loss.get("impl", "full")
        chunk = config.loss.get("chunk_size", 0)
        if self.WHOLE_BATCH_INFONCE and (name != "infonce" or impl != "full" or chunk):
            raise ValueError(f"{self.WHOLE_BATCH_INFONCE}: loss.name must be 'infonce' and loss.impl 'full' with no "
                             f"chunk_size, got name={name!r}, impl={impl!r}, chunk_size={chunk}")
        accum = int(config.get("grad_accum_steps", 1) or 1)
        if self.WHOLE_BATCH_STEP and accum > 1:
            raise ValueError(f"{self.WHOLE_BATCH_STEP}: grad_accum_steps must be 1, got {accum}")

    def model(self) -> nn.Module:
        m = self.config.model
        text = dict(m.text)
        if not text.get("vocab_size"):
            text["vocab_size"] = self.data.vocab_size  # 0 → the dataset tokenizer's vocabulary
        return TwoTower(image=dict(m.image), text=text, embed_dim=m.embed_dim,
                        temperature_init=m.get("temperature_init", 10.0), bias_init=m.get("bias_init", None),
                        text_tower=m.get("text_tower", "transformer"))

    def init_batch(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
        return {"image": self.data.image_spec(batch_size),
                "text": jax.ShapeDtypeStruct(*self.data.text_spec(batch_size))}

    def _embed(self, params: Any, image: jax.Array, text: jax.Array, rng: jax.Array,
               train: bool = True) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array | None]:
        """Both towers: (zimg, ztxt, t, b); b is None without a learned bias."""
        (zimg, ztxt), aux = self.model().apply({"params": params}, image, text, train=train,
                                               rngs={"dropout": rng})
        return zimg, ztxt, aux["t"], aux.get("b")

    def _contrastive(self, zimg: jax.Array, ztxt: jax.Array, t: jax.Array, b: jax.Array | None,
                     labels: jax.Array | None = None, rows: dict[str, jax.Array] | None = None,
                     shared: dict[str, jax.Array] | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
        """The configured contrastive loss on (global) embeddings, with t and b among the metrics; `labels`
        [B] for a loss that takes them (UniCL). `rows` and `shared` (`Towers`) are for objectives whose loss
        reads more than the embeddings; this one reads neither."""
        impl, chunk = self.config.loss.get("impl", "full"), int(self.config.loss.get("chunk_size", 0) or 0)
        _check_bias(self.config.loss.get("name", "infonce"), b is not None)  # a model's own default bias too
        if self.config.loss.get("name") in LABEL_LOSSES:
            if labels is None:
                raise ValueError(f"loss {self.config.loss.name!r} needs the batch's labels (batch['concept']); "
                                 f"this dataset's batches have none")
            loss, metrics = self.loss_fn(zimg, ztxt, t, labels)
        elif float(self.config.loss.get("contrastive_smoothing", 0.0) or 0.0):
            loss, metrics = self.loss_fn(zimg, ztxt, t, float(self.config.loss.contrastive_smoothing))
        elif impl == "full" and not chunk:
            loss, metrics = self.loss_fn(zimg, ztxt, t, *(() if b is None else (b,)))
        else:
            loss, metrics = contrastive_loss(self.config.loss.get("name", "infonce"), zimg, ztxt, t, b,
                                             impl=impl, chunk_size=chunk)
        return loss, dict(metrics, t=t, **({} if b is None else {"b": b}))

    def _towers(self, params: Any, extra: Any, batch: dict[str, jax.Array], rng: jax.Array, train: bool = True,
                norm: Normalizers | None = None) -> Towers:
        """The embeddings, t, b, and the loss terms beside the contrastive one that decompose over examples (CoCa's
        captioning, SigLIP 2's decoder and self-distillation), already weighted, with their mean terms divided by
        `norm` (None: this batch's own counts); and the new `extra`. Two-tower models have none (local is 0)."""
        zimg, ztxt, t, b = self._embed(params, batch["image"], batch["text"], rng, train)
        return Towers(zimg, ztxt, t, b, jnp.zeros((), jnp.float32), {}, extra)

    def loss(self, params: Any, extra: Any, batch: dict[str, jax.Array], rng: jax.Array, train: bool = True,
             norm: Normalizers | None = None) -> LossOut:
        out = self._towers(params, extra, batch, rng, train, norm)
        loss, metrics = self._contrastive(out.zimg, out.ztxt, out.t, out.b, batch.get("concept"), out.rows,
                                          out.shared)
        if not out.metrics:
            return loss, (metrics, out.extra)
        total = self.contrastive_weight * loss + out.local
        return total, (dict(metrics, **out.metrics, contrastive_loss=loss), out.extra)

    @property
    def contrastive_weight(self) -> float:
        """The contrastive term's weight beside the local terms (`loss.contrastive_weight`, default 1)."""
        return float(self.config.loss.get("contrastive_weight", 1.0))

    def project(self, params: Any) -> Any:
        """Clamps the log-temperature at log(loss.temperature_max) (Radford et al. 2021 clip t at 100)."""
        t_max = float(self.config.loss.get("temperature_max", 0) or 0)
        if not t_max or "t" not in params:
            return params
        return {**params, "t": jnp.minimum(params["t"], jnp.log(t_max).astype(params["t"].dtype))}

    def merge_extra(self, extra: Any, parts: Any) -> Any:
        """The new `extra` of the whole batch from the sub-batches' ([n, ...] leaves, each computed from `extra`):
        by default their mean (exact for updates linear in a batch mean, such as DINO's centre)."""
        return jax.tree.map(lambda old, x: old + jnp.mean(x - old, axis=0).astype(old.dtype)
                            if jnp.issubdtype(x.dtype, jnp.inexact) else x[-1], extra, parts)

    def value_and_grad(self, params: Any, extra: Any, batch: dict[str, jax.Array], rng: jax.Array,
                       micro_batches: int = 1) -> tuple[LossOut, Any]:
        """GradCache (Gao et al. 2021) when `micro_batches` > 1: the big-batch gradient with the activations of one
        micro-batch at a time. The contrastive loss sees every micro-batch's embeddings (all negatives), and the
        local terms run in the recompute pass.

        1. embed all n micro-batches without keeping activations; 2. the contrastive loss and its gradient w.r.t.
        the embeddings (and t, b) on the whole batch; 3. per micro-batch, recompute the towers and local terms and
        pull the cached embedding gradients (and 1 for the local terms) back to the parameters, summing.
        Micro-batch i holds rows i, i+n, … (so each stays sharded) and draws from fold_in(rng, i)."""
        n = micro_batches
        if n <= 1:
            return super().value_and_grad(params, extra, batch, rng)
        rows = {k: v for k, v in batch.items() if k != "concept"}  # labels enter the contrastive loss whole
        subs = split_microbatches(rows, n)
        keys = jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.arange(n))
        norm = mean_normalizers(jax.vmap(lambda sb, k: self.normalizers(sb, k, True))(subs, keys)) or None

        def towers(p: Any, sub: dict[str, jax.Array], key: jax.Array) -> Towers:
            return self._towers(self.differentiable(p), extra, sub, key, True, norm)

        parts = jax.lax.map(lambda xs: towers(params, *xs), (subs, keys))
        has_b = parts.b is not None
        loss_fn = lambda zimg, ztxt, t, b, rows_, shared_: self._contrastive(  # noqa: E731
            zimg, ztxt, t, b if has_b else None, batch.get("concept"), rows_, shared_)
        b0 = parts.b[0] if has_b else jnp.zeros((), jnp.float32)
        shared = jax.tree.map(lambda x: x[0], parts.shared)  # equal in every micro-batch, like t and b
        loss, vjp, metrics = jax.vjp(loss_fn, merge_microbatches(parts.zimg), merge_microbatches(parts.ztxt),
                                     parts.t[0], b0, jax.tree.map(merge_microbatches, parts.rows), shared,
                                     has_aux=True)
        weight = self.contrastive_weight if parts.metrics else 1.0
        g_img, g_txt, g_t, g_b, g_rows, g_shared = vjp(jnp.full_like(loss, weight))

        def backward(acc: Any, xs: tuple) -> tuple[Any, None]:
            sub, key, gi, gt_, gr = xs
            embed = lambda p: (lambda o: (o.zimg, o.ztxt, o.t, o.b if has_b else b0, o.local, o.rows,  # noqa: E731
                                          o.shared))(towers(p, sub, key))
            _, pull = jax.vjp(embed, params)
            # t, b and the shared parameters are common to all, and the whole batch's local term is the mean of the micro-batches':
            # 1/n each
            (grads,) = pull((gi, gt_, g_t / n, g_b / n, jnp.full((), 1.0 / n, jnp.float32), gr,
                             jax.tree.map(lambda g: g / n, g_shared)))
            return jax.tree.map(jnp.add, acc, grads), None

        zeros = jax.tree.map(jnp.zeros_like, params)
        grads, _ = jax.lax.scan(backward, zeros, (subs, keys, split_microbatches(g_img, n),
                                                  split_microbatches(g_txt, n),
                                                  jax.tree.map(lambda g: split_microbatches(g, n), g_rows)))
        new_extra = self.merge_extra(extra, parts.extra)
        if not parts.metrics:
            return (loss, (metrics, new_extra)), grads
        local = jnp.sum(parts.local) / n  # each micro-batch's share is of the whole batch's mean per micro-batch
        local_metrics = sum_counts(jax.tree.map(lambda x: jnp.mean(x, axis=0), parts.metrics), n)
        total = weight * loss + local
        return (total, (dict(metrics, **local_metrics, contrastive_loss=loss), new_extra)), grads

    def train_data(self, batch_size: int, seed: int, process_index: int, process_count: int) -> Any:
        return self.data.train(batch_size, seed, process_index, process_count)

    @functools.cached_property
    def embedder(self) -> Embedder:
        """Jitted single-tower embedding functions for the evaluators."""
        model = self.model()
        image_fn = lambda p, x: model.apply({"params": p}, x, None)[0][0]  # noqa: E731
        text_fn = lambda p, t: model.apply({"params": p}, None, t)[0][1]  # noqa: E731
        return Embedder(image_fn, text_fn, self.data.tokenize, batch_size=self.config.evals.get("batch_size", 256),
                        context=lambda: self.trace_context())

    def image_features(self, params: Any, image: jax.Array) -> jax.Array:
        """The image tower's pooled output before its projection head: the probes' input (as CLIP's linear probe)."""
        return self.model().apply({"params": params}, image, None)[1]["img/pre_logits"]

    def image_tokens(self, params: Any, image: jax.Array) -> jax.Array:
        """The image tower's output tokens [B, N, D] (before pooling): the dense probe's input."""
        return self.model().apply({"params": params}, image, None)[1]["img/encoded"]

    def build_evaluators(self) -> dict[str, Evaluator]:
        """Zero-shot classification and retrieval, and the image-only probes when `evals.probe_sets` names any."""
        features = Embedder(self.image_features, None, None, batch_size=self.config.evals.get("batch_size", 256),
                            context=lambda: self.trace_context())
        tokens = Embedder(self.image_tokens, None, None, batch_size=self.config.evals.get("batch_size", 256),
                          context=lambda: self.trace_context())
        return {**self.data.evaluators(self.embedder, self.config.evals),
                **probe_evaluator(self.data, features.features, self.config.evals, tokens.features)}

