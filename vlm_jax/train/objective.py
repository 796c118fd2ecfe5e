"""The Objective seam: what differs between CLIP, SigLIP, CLIPPO, CoCa, MAE … lives here, not in the trainer."""
from __future__ import annotations

import abc
import contextlib
from typing import Any, Callable, ContextManager

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from vlm_jax.train.microbatch import split_microbatches

LossOut = tuple[jax.Array, tuple[dict[str, jax.Array], Any]]
Normalizers = dict[str, jax.Array]
Evaluator = Callable[[Any, Any], dict[str, float]]  # (params, extra) → flat metrics

_REGISTRY: dict[str, type["Objective"]] = {}


def register(name: str) -> Callable[[type["Objective"]], type["Objective"]]:
    """Class decorator adding an objective to the registry under `name`."""
    def wrap(cls: type[Objective]) -> type[Objective]:
        _REGISTRY[name] = cls
        return cls
    return wrap


def objective_class(name: str) -> type["Objective"]:
    """The registered objective class `name`."""
    import vlm_jax.objectives  # noqa: F401  (registers the built-in objectives)
    if name not in _REGISTRY:
        raise ValueError(f"Unknown objective '{name}'; valid: {sorted(_REGISTRY)}")
    return _REGISTRY[name]


def get_objective(config: ml_collections.ConfigDict) -> "Objective":
    """Instantiates `config.objective` from the registry."""
    return objective_class(config.objective)(config)


class Objective(abc.ABC):
    """A model + a loss + data + evaluators. The trainer calls only these methods."""

    # Defaults of the objective's own config sections, filled in before command-line overrides apply.
    CONFIG_DEFAULTS: dict[str, Any] = {}
    # Whether the loss takes NaFlex image batches (`data.naflex`: patches, positions, mask, grid) — true where only
    # the pooled image embedding is used; objectives reading image tokens refuse NaFlex until they mask padding.
    NAFLEX: bool = False
    # The dataset (`data.image_text` registry) an objective reads, when it reads one: its `tokenize` fingerprints
    # the tokenizer for resume checks.
    data: Any = None
    # Boolean tree over the parameters, True where `optim.freeze` holds them fixed (the trainer sets it; None: none).
    frozen: Any = None
    # Whether a model without an analytic FLOP count reports the traced train step's FLOPs (else no MFU)
    TRACED_FLOPS: bool = False

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        # Mesh + logical axis rules for code the objective jits itself (evaluators); set by the trainer's Setup.
        self.trace_context: Callable[[], ContextManager] = contextlib.nullcontext

    @abc.abstractmethod
    def model(self) -> nn.Module:
        """The Flax module; `model().init(rngs, **init_batch)` creates the parameters."""

    @abc.abstractmethod
    def init_batch(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
        """Shapes of one batch, used to create parameters without data."""

    def tokenize_probes(self, texts: list[str]) -> Any:
        """Token ids (or renders) of `texts` as the objective's data makes them; None when it reads no text."""
        return None if self.data is None else self.data.tokenize(texts)

    def init_extra(self, params: Any) -> Any:
        """Non-parameter state (feature queues, EMA weights …); sharded and checkpointed with the rest."""
        return {}

    @abc.abstractmethod
    def loss(self, params: Any, extra: Any, batch: dict[str, jax.Array], rng: jax.Array, train: bool = True,
             norm: Normalizers | None = None) -> LossOut:
        """Forward + loss: returns (loss, (metrics, new_extra)); runs inside the jitted step.

        `norm`: what the loss's mean terms divide by (the `normalizers` of the whole accumulated batch, per
        micro-batch); None: this batch's own."""

    def normalizers(self, batch: dict[str, jax.Array], rng: jax.Array, train: bool = True) -> Normalizers:
        """Counts the loss's mean terms divide by on `batch` (target tokens, masked positions …), computed without
        the model from the batch and the loss's `rng`; {} when every term is a mean over a fixed number of items
        per example. Summed over micro-batches, they make an accumulated step equal the big-batch step."""
        return {}

    def value_and_grad(self, params: Any, extra: Any, batch: dict[str, jax.Array], rng: jax.Array,
                       micro_batches: int = 1) -> tuple[LossOut, Any]:
        """((loss, (metrics, new_extra)), grads) of `loss` on the whole batch, in `micro_batches` sequential parts.

        Parts are strided (each spans every device), part i draws from `fold_in(rng, i)`, `extra` is threaded through
        them in order, and the mean terms divide by the whole batch's `normalizers`, so the result is the
        big-batch gradient. Count metrics (named `tokens` or `*_tokens`) are summed, the rest averaged. Objectives
        whose loss couples examples across the batch (contrastive negatives) override this (GradCache)."""
        grad = jax.value_and_grad(lambda p, *args: self.loss(self.differentiable(p), *args), has_aux=True)
        if micro_batches == 1:
            return grad(params, extra, batch, rng, True)
        micro = split_microbatches(batch, micro_batches)
        keys = jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.arange(micro_batches))
        norm = mean_normalizers(jax.vmap(lambda b, k: self.normalizers(b, k, True))(micro, keys)) or None
        step = lambda p, e, b, k: grad(p, e, b, k, True, norm)  # noqa: E731

        def body(carry: Any, xs: Any) -> tuple[Any, None]:
            acc, extra = carry
            mb, key = xs
            (loss, (metrics, extra)), grads = step(params, extra, mb, key)
            return (jax.tree.map(jnp.add, acc, (loss, metrics, grads)), extra), None

        (loss_s, (metrics_s, _)), grads_s = jax.eval_shape(step, params, extra, jax.tree.map(lambda x: x[0], micro),
                                                           rng)
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), (loss_s, metrics_s, grads_s))
        (total, extra), _ = jax.lax.scan(body, (zeros, extra), (micro, keys))
        loss, metrics, grads = jax.tree.map(lambda x: x / micro_batches, total)
        return (loss, (sum_counts(metrics, micro_batches), extra)), grads

    def differentiable(self, params: Any) -> Any:
        """`params` with the leaves `optim.freeze` holds fixed (`self.frozen`, set by the trainer) behind
        stop_gradient, so the step computes no gradient for them (only the activations' gradients flow through)."""
        if self.frozen is None:
            return params
        return jax.tree.map(lambda p, f: jax.lax.stop_gradient(p) if f else p, params, self.frozen)

    def project(self, params: Any) -> Any:
        """Maps updated parameters back into their allowed set (e.g. a clamped logit scale); inside the step."""
        return params

    def after_update(self, params: Any, extra: Any) -> Any:
        """Updates `extra` from the new parameters (e.g. an EMA teacher); inside the jitted step."""
        return extra

    @abc.abstractmethod
    def train_data(self, batch_size: int, seed: int, process_index: int, process_count: int) -> Any:
        """A checkpointable grain iterable of per-process numpy batches."""

    def build_evaluators(self) -> dict[str, Evaluator]:
        """Named evaluators run periodically and at the end (built once, on first use, by `evaluators`)."""
        return {}

    def evaluators(self) -> dict[str, Evaluator]:
        """`build_evaluators()`, built on first use and kept (they hold jitted functions and prepared eval sets),
        with the zero-shot benchmark suite when `evals.suite` names one (`evals.standard.suite_evaluators`)."""
        if "_built_evaluators" not in self.__dict__:
            from vlm_jax.evals.standard import suite_evaluators

            self.__dict__["_built_evaluators"] = {**self.build_evaluators(), **suite_evaluators(self)}
        return self.__dict__["_built_evaluators"]

    def flop_phases(self) -> tuple[int, ...]:
        """The first step of each phase whose forward passes differ (`forward_flops(batch, phase)`); one by default."""
        return (0,)

    def forward_flops(self, batch: dict[str, Any], phase: int = 0) -> dict[str, float]:
        """Matmul FLOPs of the loss's forward passes on `batch` shapes in `phase` (an index into `flop_phases`), by
        part (MFU and compute accounting); by default one pass through the model. Raises NotImplementedError when
        there is no analytic count."""
        from vlm_jax.scaling.compute import model_forward

        return model_forward(self.model(), batch)


def check_naflex(objective: Objective, config: ml_collections.ConfigDict) -> None:
    """Refuses `data.naflex` for an objective that does not take NaFlex batches, or whose model's patch size differs
    from `data.naflex.patch`."""
    budgets = getattr(objective.data, "naflex", None)
    if budgets is None:
        return
    name = config.get("objective", type(objective).__name__)
    if not objective.NAFLEX:
        raise ValueError(f"objective {name!r} does not train on NaFlex batches (data.naflex.budgets="
                         f"{budgets.train}): it reads image tokens whose padding it does not mask; unset data.naflex")
    from vlm_jax.scaling.compute import vit_config

    patch = tuple(vit_config(dict(config.model.get("image", {})))["patch_size"])
    if patch != (budgets.patch, budgets.patch):
        raise ValueError(f"data.naflex.patch {budgets.patch} differs from the model's patch size {patch} "
                         "(model.image.patch_size / variant)")


def is_count_metric(name: str) -> bool:
    """Whether metric `name` counts items (`tokens`, `*_tokens`): summed over micro-batches, not averaged."""
    return name == "tokens" or name.endswith("_tokens")


def sum_counts(metrics: dict[str, jax.Array], micro_batches: int) -> dict[str, jax.Array]:
    """Micro-batch means → the big batch's metrics: count metrics become sums."""
    return {k: v * micro_batches if is_count_metric(k) else v for k, v in metrics.items()}


def mean_normalizers(per_micro: Normalizers) -> Normalizers:
    """Stacked per-micro-batch counts [n] → the whole batch's count per micro-batch (at least 1 in all)."""
    n = next(iter(per_micro.values())).shape[0] if per_micro else 1
    return {k: jnp.maximum(jnp.sum(v.astype(jnp.float32)), 1.0) / n for k, v in per_micro.items()}


def normalizer(norm: Normalizers | None, name: str, own: jax.Array) -> jax.Array:
    """`norm[name]` when the loss runs inside an accumulated step, else this batch's own count `own`."""
    return own if norm is None or name not in norm else norm[name]
