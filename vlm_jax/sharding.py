"""Device mesh from config and the one table mapping logical axis names to mesh axes."""
from __future__ import annotations

import contextlib
import logging
import math
from typing import Any, Callable, Iterator, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

log = logging.getLogger(__name__)
MESH_AXES = ("data", "fsdp", "tensor")
FSDP_DIMS = ("largest", "rules", "2d")  # config.fsdp_dims, see tree_shardings
FSDP2 = "fsdp2"  # the second FSDP axis of a split fsdp axis (make_mesh(split_fsdp=True)); rules name only "fsdp"

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


def _resolve_sizes(spec: Sequence[Sequence[Any]], n_devices: int) -> tuple[list[str], list[int]]:
    """Axis names and sizes of `[(name, size), ...]` with a -1 size inferred from `n_devices`."""
    names = [str(n) for n, _ in spec]
    sizes = [int(s) for _, s in spec]
    if len(set(names)) != len(names):
        raise ValueError(f"Mesh axis names repeat: {names}")
    if sizes.count(-1) > 1:
        raise ValueError(f"At most one mesh axis may be -1: {list(spec)}")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if n_devices % known:
            raise ValueError(f"{n_devices} devices do not divide into mesh {list(spec)}")
        sizes[sizes.index(-1)] = n_devices // known
    return names, sizes


def _dcn_sizes(names: list[str], dcn: Sequence[Sequence[Any]] | None) -> list[int]:
    """Per-axis number of slices from `[(name, slices), ...]`; axes not named get 1."""
    dcn = {str(n): int(s) for n, s in (dcn or ())}
    unknown = set(dcn) - set(names)
    if unknown:
        raise ValueError(f"dcn_mesh axes {sorted(unknown)} are not mesh axes; valid: {names}")
    if any(s < 1 for s in dcn.values()):
        raise ValueError(f"dcn_mesh sizes must be >= 1 (no -1 across slices): {dcn}")
    return [dcn.get(n, 1) for n in names]


def _slices(devices: list[Any], num_slices: int) -> list[list[Any]]:
    """Devices grouped into slices: by `slice_index` (TPU) when present, else contiguous by process then id."""
    if all(getattr(d, "slice_index", None) is not None for d in devices):
        groups: dict[int, list[Any]] = {}
        for d in devices:
            groups.setdefault(d.slice_index, []).append(d)
        if len(groups) == num_slices:
            return [groups[k] for k in sorted(groups)]
    ordered = sorted(devices, key=lambda d: (d.process_index, d.id))
    per = len(ordered) // num_slices
    return [ordered[i * per:(i + 1) * per] for i in range(num_slices)]


def hybrid_device_array(ici: Sequence[int], dcn: Sequence[int], devices: list[Any]) -> np.ndarray:
    """Device array of shape ici*dcn per axis: slices vary slowest along each axis, ICI fastest."""
    num_slices = math.prod(dcn)
    if len(devices) != num_slices * math.prod(ici):
        raise ValueError(f"{len(devices)} devices != {num_slices} slices × ICI mesh {list(ici)}")
    groups = _slices(devices, num_slices)
    if any(len(g) != math.prod(ici) for g in groups):
        raise ValueError(f"Slices have {[len(g) for g in groups]} devices; the ICI mesh needs {math.prod(ici)} each")
    if groups[0] and getattr(groups[0][0], "platform", "cpu") == "tpu":
        from jax.experimental import mesh_utils  # physical-topology-aware order within each slice
        per_slice = [mesh_utils.create_device_mesh(ici, g, allow_split_physical_axes=True) for g in groups]
    else:
        per_slice = [np.array(g, dtype=object).reshape(ici) for g in groups]
    blocks = np.stack(per_slice).reshape(tuple(dcn) + tuple(ici))  # (dcn..., ici...)
    nd = len(ici)
    order = [i for axis in range(nd) for i in (axis, nd + axis)]  # (dcn0, ici0, dcn1, ici1, ...)
    return blocks.transpose(order).reshape([d * i for d, i in zip(dcn, ici)])


def fsdp_factors(n: int) -> tuple[int, int]:
    """n = a × b with a ≤ b as close as possible (a = 1 for a prime n): the two FSDP sub-axes."""
    a = max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)
    return a, n // a


def _split_fsdp(mesh: Mesh, fsdp_slices: int) -> Mesh:
    """`mesh` with its "fsdp" axis (n devices) reshaped into "fsdp" (a) × FSDP2 (b), a × b = n: each fsdp2 group
    is b devices adjacent on the original axis (so on a TPU torus it stays on the physical axes that held them)."""
    names = list(mesh.axis_names)
    if "fsdp" not in names or FSDP2 in names or fsdp_slices > 1:
        return mesh  # no fsdp axis, already split, or fsdp across slices: one axis
    i = names.index("fsdp")
    a, b = fsdp_factors(mesh.devices.shape[i])
    if a == 1:
        return mesh  # a prime size has no split
    shape = list(mesh.devices.shape)
    shape[i:i + 1] = [a, b]
    names.insert(i + 1, FSDP2)
    return Mesh(mesh.devices.reshape(shape), tuple(names), axis_types=(jax.sharding.AxisType.Auto,) * len(names))


def make_mesh(spec: Sequence[Sequence[Any]], devices: Sequence[jax.Device] | None = None,
              dcn: Sequence[Sequence[Any]] | None = None, split_fsdp: bool = False) -> Mesh:
    """Builds a mesh from `[(name, size), ...]`; one size may be -1 (inferred). Axes are Auto-typed.

    `dcn` (e.g. `[("data", 2)]`) spreads axes over several slices (TPU multi-slice, or hosts joined by a
    slower network): the mesh axis then has size ICI size × slices, with slices varying slowest.
    `split_fsdp`: the fsdp axis (n devices) becomes two axes "fsdp" × "fsdp2" (a × b = n), so that an array no
    single dimension of which n divides can still be split over two of its dimensions (`fsdp_on_largest`).
    """
    devices = list(devices if devices is not None else jax.devices())
    names = [str(n) for n, _ in spec]
    dcn_sizes = _dcn_sizes(names, dcn)
    num_slices = math.prod(dcn_sizes)
    if len(devices) % num_slices:
        raise ValueError(f"{len(devices)} devices do not split into {num_slices} slices")
    names, sizes = _resolve_sizes(spec, len(devices) // num_slices)
    if split_fsdp:
        fsdp_slices = dcn_sizes[names.index("fsdp")] if "fsdp" in names else 1
        return _split_fsdp(make_mesh(spec, devices, dcn), fsdp_slices)
    auto = (jax.sharding.AxisType.Auto,) * len(names)
    if num_slices > 1:
        array = hybrid_device_array(sizes, dcn_sizes, devices)
        return Mesh(array, tuple(names), axis_types=auto)
    if -1 not in [int(s) for _, s in spec] and math.prod(sizes) < len(devices) and jax.process_count() == 1:
        log.warning("Mesh %s uses %d of the %d devices; the other %d stay idle (size one axis -1 to use them all).",
                    dict(zip(names, sizes)), math.prod(sizes), len(devices), len(devices) - math.prod(sizes))
        devices = devices[:math.prod(sizes)]  # a smaller mesh on one host uses the first devices
    if math.prod(sizes) != len(devices):
        raise ValueError(f"Mesh {dict(zip(names, sizes))} needs {math.prod(sizes)} devices, have {len(devices)}")
    return jax.make_mesh(tuple(sizes), tuple(names), axis_types=auto, devices=devices)


def fsdp_mesh(fsdp: int = -1) -> list[tuple[str, int]]:
    """Config mesh for FSDP: over every device (-1), or N-way FSDP groups with data parallelism across them."""
    return [("data", 1), ("fsdp", -1), ("tensor", 1)] if fsdp == -1 else [("data", -1), ("fsdp", fsdp), ("tensor", 1)]


def rules_for_mesh(mesh: Mesh, rules: Sequence[Sequence[Any]] = DEFAULT_RULES) -> list[tuple[str, Any]]:
    """Drops mesh axes the mesh lacks (or of size 1) from the rules."""
    out = []
    for logical, axes in rules:
        if axes is None:
            out.append((logical, None))
            continue
        axes = (axes,) if isinstance(axes, str) else tuple(axes)
        axes = tuple(x for a in axes for x in ((a, FSDP2) if a == "fsdp" else (a,)))  # a split fsdp axis
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


def _names(axes: Any) -> tuple[str, ...]:
    """Mesh axis names of one PartitionSpec entry."""
    return () if axes is None else ((axes,) if isinstance(axes, str) else tuple(axes))


def fsdp_on_largest(spec: P, shape: tuple[int, ...], mesh: Mesh, axis: str = "fsdp") -> P:
    """Moves the FSDP axes to the largest dimension they divide that no other mesh axis shards (ties: last dim).

    With a split fsdp axis ("fsdp" × "fsdp2", a × b devices) both go on one dimension when one divides a × b;
    otherwise "fsdp2" takes the largest free dimension b divides and "fsdp" another that a divides, so the
    array is still split a × b ways (e.g. So400m's 1152 × 4304 MLP kernel over 512 = 16 × 32 chips).
    """
    group = tuple(a for a in (axis, FSDP2) if a in mesh.shape and mesh.shape[a] > 1)
    if not group:
        return spec
    entries = [tuple(a for a in _names(e) if a not in group)
               for e in tuple(spec) + (None,) * (len(shape) - len(spec))]
    free = lambda n, taken=(): [i for i, (dim, e) in enumerate(zip(shape, entries))  # noqa: E731
                                if not e and dim % n == 0 and i not in taken]
    pick = lambda dims: max(dims, key=lambda i: (shape[i], i))  # noqa: E731
    if free(axes_size(mesh, group)):
        entries[pick(free(axes_size(mesh, group)))] = group
    elif len(group) == 2:
        if free(mesh.shape[group[1]]):
            second = pick(free(mesh.shape[group[1]]))
            entries[second] = (group[1],)
            if free(mesh.shape[group[0]], (second,)):
                entries[pick(free(mesh.shape[group[0]], (second,)))] = (group[0],)
        elif free(mesh.shape[group[0]]):
            entries[pick(free(mesh.shape[group[0]]))] = (group[0],)
    return P(*[e[0] if len(e) == 1 else (e or None) for e in entries])


def unbox_abstract(tree: Any) -> Any:
    """Strips logical-axis boxes without adding sharding constraints (safe outside jit)."""
    return jax.tree.map(lambda x: x.unbox(apply_constraint=False) if isinstance(x, nn.Partitioned) else x,
                        tree, is_leaf=lambda x: isinstance(x, nn.Partitioned))


def tree_shardings(abstract_boxed: Any, mesh: Mesh, rules: Sequence[Sequence[Any]] = DEFAULT_RULES,
                   min_size: int = 2 ** 12, fsdp: str = "largest") -> Any:
    """NamedShardings for a tree of (possibly logically boxed) abstract arrays.

    fsdp="largest" puts the fsdp mesh axis on each array's largest dimension it divides (after the logical
    rules placed the other axes); fsdp="rules" keeps where the logical rules put it (e.g. "embed"); "2d" is
    "largest" on a mesh whose fsdp axis is split in two (then an array may be split over two dimensions).
    """
    if fsdp not in FSDP_DIMS:
        raise ValueError(f"fsdp_dims must be one of {FSDP_DIMS}, got {fsdp!r}")
    rules = rules_for_mesh(mesh, rules)
    specs = nn.get_partition_spec(abstract_boxed)
    mesh_specs = nn.logical_to_mesh(specs, rules)
    unboxed = unbox_abstract(abstract_boxed)

    def one(spec: Any, leaf: Any) -> NamedSharding:
        spec = spec if isinstance(spec, P) else P()
        if fsdp != "rules":
            spec = fsdp_on_largest(spec, tuple(leaf.shape), mesh)
        return NamedSharding(mesh, _fit_spec(spec, tuple(leaf.shape), mesh, min_size))

    return jax.tree.map(one, mesh_specs, unboxed, is_leaf=lambda x: isinstance(x, P) or x is None)


def replicated(mesh: Mesh) -> NamedSharding:
    """A fully replicated sharding."""
    return NamedSharding(mesh, P())


def global_batch(local: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """Assembles per-process numpy batches into global jax.Arrays."""
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local)


@contextlib.contextmanager
def trace_context(mesh: Mesh, rules: Sequence[Sequence[Any]] = DEFAULT_RULES) -> Iterator[None]:
    """The mesh (as an abstract mesh, so it may be entered inside jit) and its logical axis rules.

    Activation constraints (`nn.with_logical_constraint`) and the shard_map loss kernels read both while tracing.
    On a one-device CPU mesh, bf16 dense matmuls also go through the oneDNN kernel (`kernels.onednn`; a custom
    call has no SPMD partitioning rule, so sharded meshes keep XLA's dot).
    """
    from vlm_jax.kernels import onednn

    native = mesh.devices.size == 1 and mesh.devices.flat[0].platform == "cpu"
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), nn.logical_axis_rules(rules_for_mesh(mesh, rules)), \
            onednn.scope(native):
        yield


def _signature(args: tuple) -> tuple:
    """Hashable input signature: tree structure plus each leaf's shape, dtype, weak type and sharding."""
    leaves, treedef = jax.tree.flatten(args)
    return treedef, tuple((tuple(x.shape), x.dtype, bool(getattr(x, "weak_type", False)), x.sharding)
                          for x in leaves)


class MeshJit:
    """`jax.jit(fn)` that always traces under `mesh` and its axis rules, whoever calls it and from where.

    Called, it compiles ahead of time once per input signature and runs that executable, which `compiled()`
    returns for inspection (HLO text, memory analysis): what is inspected is what runs.
    """

    def __init__(self, fn: Callable, mesh: Mesh, rules: Sequence[Sequence[Any]], **jit_kwargs: Any):
        self.mesh, self.rules = mesh, rules

        def traced(*args: Any) -> Any:
            with trace_context(mesh, rules):
                return fn(*args)

        self.traced = traced
        self.jitted = jax.jit(traced, **jit_kwargs)
        self._executables: dict[tuple, Any] = {}
        self._last: Any = None

    def lower(self, *args: Any) -> Any:
        """The lowered program for these (concrete or abstract) inputs."""
        return self.jitted.lower(*args)

    def compile(self, *args: Any) -> Any:
        """The compiled executable for these inputs' signature (compiled on first use)."""
        key = _signature(args)
        if key not in self._executables:
            lowered = self.lower(*args)
            abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), args)
            self._executables[key] = (lowered, lowered.compile(), abstract)
        self._last = self._executables[key]
        return self._last[1]

    def compiled(self) -> Any:
        """The executable of the most recent call or compile (None before any)."""
        return self._last[1] if self._last else None

    def lowered(self) -> Any:
        """The lowered program (StableHLO, with its sharding annotations) of that executable."""
        return self._last[0] if self._last else None

    def jaxpr(self, *args: Any) -> Any:
        """The closed jaxpr, traced under the mesh and rules (no args: those of the last executable)."""
        return jax.make_jaxpr(self.traced)(*(args or self._last[2]))

    def eval_shape(self, *args: Any) -> Any:
        """Output shapes and dtypes."""
        return jax.eval_shape(self.traced, *args)

    def __call__(self, *args: Any) -> Any:
        if any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(args)):
            return self.jitted(*args)  # called inside another trace (eval_shape, an outer jit)
        return self.compile(*args)(*args)
