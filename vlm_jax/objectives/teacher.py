"""An EMA teacher kept in the train state's `extra` (SigLIP 2's SILC/TIPS, OTTER): a copy of some of the student's
parameter subtrees, boxed with the student's logical axis names so it is sharded like the student and checkpointed
with everything else, updated after every applied step as teacher ← m · teacher + (1 − m) · student."""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec


def boxed_like(tree: Any, names: Any) -> Any:
    """`tree`'s leaves boxed with the logical axis names of `names` (a tree of PartitionSpecs; P(): left bare)."""
    box = lambda spec, x: nn.LogicallyPartitioned(x, names=tuple(spec)) if spec else x  # noqa: E731
    return jax.tree.map(box, names, tree, is_leaf=lambda x: isinstance(x, PartitionSpec) or x is None)


def param_names(model: nn.Module, batch: dict[str, jax.ShapeDtypeStruct]) -> Any:
    """The logical axis names of every parameter of `model` (a tree of PartitionSpecs), from an abstract init on
    `batch` (an objective's `init_batch`)."""
    dummy = jax.tree.map(lambda v: jnp.zeros(v.shape, v.dtype), batch)
    boxed = jax.eval_shape(lambda k: model.init({"params": k, "dropout": k}, **dummy, train=False)["params"],
                           jax.random.key(0))
    return nn.get_partition_spec(boxed)


def init_teacher(params: Any, names: Any, subtrees: Sequence[str]) -> dict[str, Any]:
    """The teacher at step 0: copies of the student's `subtrees`, boxed like them."""
    return {name: boxed_like(jax.tree.map(jnp.array, params[name]), names[name]) for name in subtrees}


def ema_update(teacher: dict[str, Any], params: Any, momentum: float) -> dict[str, Any]:
    """teacher ← m · teacher + (1 − m) · student, subtree by subtree."""
    m = float(momentum)
    return {name: jax.tree.map(lambda t, s: m * t + (1.0 - m) * s, sub, params[name]) for name, sub in teacher.items()}


def with_teacher(params: Any, teacher: dict[str, Any]) -> Any:
    """The student's parameters with the teacher's subtrees in place (a constant to autodiff)."""
    return {**params, **jax.lax.stop_gradient(teacher)}
