"""Device mesh from config and the one table mapping logical axis names to mesh axes."""
from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# Logical name → mesh axes. The only place where model axis names meet mesh axis names.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("vocab", "tensor"),
    ("kv", None),
    ("seq", None),
    ("layers", None),
)


def make_mesh(spec: Sequence[Sequence[Any]], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Builds a mesh from `[(name, size), ...]`; one size may be -1 (inferred). Axes are Auto-typed."""
    devices = list(devices if devices is not None else jax.devices())
    names = [str(n) for n, _ in spec]
    sizes = [int(s) for _, s in spec]
    if len(set(names)) != len(names):
        raise ValueError(f"Mesh axis names repeat: {names}")
    if sizes.count(-1) > 1:
        raise ValueError(f"At most one mesh axis may be -1: {list(spec)}")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"{len(devices)} devices do not divide into mesh {list(spec)}")
        sizes[sizes.index(-1)] = len(devices) // known
    if -1 not in [int(s) for _, s in spec] and math.prod(sizes) < len(devices) and jax.process_count() == 1:
        devices = devices[:math.prod(sizes)]  # a smaller mesh on one host uses the first devices
    if math.prod(sizes) != len(devices):
        raise ValueError(f"Mesh {dict(zip(names, sizes))} needs {math.prod(sizes)} devices, have {len(devices)}")
    auto = (jax.sharding.AxisType.Auto,) * len(names)
    return jax.make_mesh(tuple(sizes), tuple(names), axis_types=auto, devices=devices)


def rules_for_mesh(mesh: Mesh, rules: Sequence[Sequence[Any]] = DEFAULT_RULES) -> list[tuple[str, Any]]:
    """Drops mesh axes the mesh lacks (or of size 1) from the rules."""
    out = []
    for logical, axes in rules:
        if axes is None:
            out.append((logical, None))
            continue
        axes = (axes,) if isinstance(axes, str) else tuple(axes)
        kept = tuple(a for a in axes if a in mesh.shape and mesh.shape[a] > 1)
        out.append((logical, kept[0] if len(kept) == 1 else (kept or None)))
    return out


def batch_spec(mesh: Mesh, rules: Sequence[Sequence[Any]] = DEFAULT_RULES) -> P:
    """PartitionSpec of the leading (batch) dimension."""
    return nn.logical_to_mesh_axes(("batch",), rules_for_mesh(mesh, rules))


def batch_sharding(mesh: Mesh, rules: Sequence[Sequence[Any]] = DEFAULT_RULES) -> NamedSharding:
    """Sharding of data batches: leading dim over the batch axes."""
    return NamedSharding(mesh, batch_spec(mesh, rules))


def axes_size(mesh: Mesh, axes: Any) -> int:
    """Number of devices a PartitionSpec entry (None, a name or a tuple of names) spans."""
    names = () if axes is None else ((axes,) if isinstance(axes, str) else tuple(axes))
    return math.prod(mesh.shape[a] for a in names)


def _fit_spec(spec: P, shape: tuple[int, ...], mesh: Mesh, min_size: int) -> P:
    """Replicates dims that the mesh axes don't divide, and arrays below `min_size` elements."""
    if int(np.prod(shape, dtype=np.int64)) < min_size:
        return P()
    fitted = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        if axes is None:
            fitted.append(None)
            continue
        fitted.append(axes if dim % axes_size(mesh, axes) == 0 else None)
    return P(*fitted)


def unbox_abstract(tree: Any) -> Any:
    """Strips logical-axis boxes without adding sharding constraints (safe outside jit)."""
    return jax.tree.map(lambda x: x.unbox(apply_constraint=False) if isinstance(x, nn.Partitioned) else x,
                        tree, is_leaf=lambda x: isinstance(x, nn.Partitioned))


def tree_shardings(abstract_boxed: Any, mesh: Mesh, rules: Sequence[Sequence[Any]] = DEFAULT_RULES,
                   min_size: int = 2 ** 12) -> Any:
    """NamedShardings for a tree of (possibly logically boxed) abstract arrays."""
    rules = rules_for_mesh(mesh, rules)
    specs = nn.get_partition_spec(abstract_boxed)
    mesh_specs = nn.logical_to_mesh(specs, rules)
    unboxed = unbox_abstract(abstract_boxed)

    def one(spec: Any, leaf: Any) -> NamedSharding:
        spec = spec if isinstance(spec, P) else P()
        return NamedSharding(mesh, _fit_spec(spec, tuple(leaf.shape), mesh, min_size))

    return jax.tree.map(one, mesh_specs, unboxed, is_leaf=lambda x: isinstance(x, P) or x is None)


def replicated(mesh: Mesh) -> NamedSharding:
    """A fully replicated sharding."""
    return NamedSharding(mesh, P())


def global_batch(local: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """Assembles per-process numpy batches into global jax.Arrays."""
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local)
