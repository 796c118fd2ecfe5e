"""The train state: parameters, optimizer state, non-parameter objective state, step and RNG."""
from __future__ import annotations

from typing import Any

import flax.struct
import jax


@flax.struct.dataclass
class TrainState:
    """Everything a run needs to continue exactly; checkpointed and sharded as one pytree."""

    step: jax.Array
    params: Any
    opt_state: Any
    extra: Any  # objective-owned state outside the optimizer: queues, EMA teachers, reference sets
    rng: jax.Array
