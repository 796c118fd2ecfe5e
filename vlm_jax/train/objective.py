"""The Objective seam: what differs between CLIP, SigLIP, CLIPPO, CoCa, MAE … lives here, not in the trainer."""
from __future__ import annotations

import abc
import contextlib
from typing import Any, Callable, ContextManager

import flax.linen as nn
import jax
import ml_collections

LossOut = tuple[jax.Array, tuple[dict[str, jax.Array], Any]]
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

    def init_extra(self, params: Any) -> Any:
        """Non-parameter state (feature queues, EMA weights …); sharded and checkpointed with the rest."""
        return {}

    @abc.abstractmethod
    def loss(self, params: Any, extra: Any, batch: dict[str, jax.Array], rng: jax.Array,
             train: bool = True) -> LossOut:
        """Forward + loss: returns (loss, (metrics, new_extra)); runs inside the jitted step."""

    def value_and_grad(self, params: Any, extra: Any, batch: dict[str, jax.Array],
                       rng: jax.Array) -> tuple[LossOut, Any]:
        """((loss, (metrics, new_extra)), grads) of `loss`; objectives may override (e.g. GradCache)."""
        return jax.value_and_grad(lambda p: self.loss(p, extra, batch, rng, True), has_aux=True)(params)

    def project(self, params: Any) -> Any:
        """Maps updated parameters back into their allowed set (e.g. a clamped logit scale); inside the step."""
        return params

    def after_update(self, params: Any, extra: Any) -> Any:
        """Updates `extra` from the new parameters (e.g. an EMA teacher); inside the jitted step."""
        return extra

    @abc.abstractmethod
    def train_data(self, batch_size: int, seed: int, process_index: int, process_count: int) -> Any:
        """A checkpointable grain iterable of per-process numpy batches."""

    def evaluators(self) -> dict[str, Evaluator]:
        """Named evaluators run periodically and at the end."""
        return {}

    def forward_flops(self, batch: dict[str, Any]) -> dict[str, float]:
        """Matmul FLOPs of the loss's forward passes on `batch` shapes, by part (MFU and compute accounting); by
        default one pass through the model. Raises NotImplementedError when there is no analytic count."""
        from vlm_jax.scaling.compute import model_forward

        return model_forward(self.model(), batch)
