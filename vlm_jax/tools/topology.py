"""TPU topology names → abstract devices for ahead-of-time compilation on a machine without TPUs."""
from __future__ import annotations

import math
import re
from typing import Any

from vlm_jax.scaling.hardware import Chip, chip

# Generation → (libtpu topology prefix, chip config, torus dims).
_GENERATIONS = {"v4": ("v4", "megacore", 3), "v5p": ("v5p", "megacore", 3),
                "v5e": ("v5e", "default", 2), "v6e": ("v6e", "default", 2)}
# Chip count → slice shape, for names like v5p-128 (cores) or v5e-256 (chips).
_SHAPES_2D = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8), 128: (8, 16), 256: (16, 16)}
_SHAPES_3D = {4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4), 64: (4, 4, 4), 128: (4, 4, 8),
              256: (4, 8, 8), 512: (8, 8, 8), 1024: (8, 8, 16), 2048: (8, 16, 16), 4096: (16, 16, 16)}


def parse(spec: str) -> tuple[Chip, tuple[int, ...]]:
    """"v5p:4x4x4" (chip grid) or "v5p-128" (Cloud TPU name: cores for v4/v5p, chips for v5e/v6e)."""
    m = re.fullmatch(r"(v4|v5p|v5e|v6e)(?::(\d+(?:x\d+)*)|-(\d+))", spec.strip().lower())
    if not m:
        raise ValueError(f"Topology {spec!r} not understood; use e.g. v5p:4x4x4, v5e:16x16, v5p-128, v5e-256 "
                         f"(generations: {', '.join(_GENERATIONS)})")
    gen, grid, count = m.groups()
    c = chip(gen)
    dims = _GENERATIONS[gen][2]
    if grid:
        shape = tuple(int(x) for x in grid.split("x"))
    else:
        chips = int(count) // c.cores_per_chip
        table = _SHAPES_3D if dims == 3 else _SHAPES_2D
        if chips not in table:
            raise ValueError(f"{spec}: no standard slice of {chips} chips; known sizes: "
                             f"{[k * c.cores_per_chip for k in table]}")
        shape = table[chips]
    if len(shape) != dims:
        raise ValueError(f"{gen} slices are {dims}-D chip grids, got {shape}")
    return c, shape


def devices(spec: str, num_slices: int = 1) -> tuple[Chip, list[Any]]:
    """The chip and the abstract devices of `num_slices` slices of topology `spec` (needs libtpu)."""
    try:
        from jax.experimental import topologies
    except ImportError as err:  # pragma: no cover - jax always ships it
        raise RuntimeError("jax.experimental.topologies is missing") from err
    c, shape = parse(spec)
    prefix, chip_config, dims = _GENERATIONS[c.name]
    # Full tori wrap around; partial slices do not (v4/v5p: every dim a multiple of 4; v5e/v6e: 16x16).
    wrap = tuple(d % 4 == 0 for d in shape) if dims == 3 and all(d % 4 == 0 for d in shape) else \
        tuple(d == 16 for d in shape) if dims == 2 else (False,) * 3
    name = f"{prefix}:{'x'.join(map(str, shape))}"
    try:
        topo = topologies.get_topology_desc(
            topology_name=name, platform="tpu", chip_config_name=chip_config,
            chips_per_host_bounds=(2, 2, 1), num_slices=num_slices, wrap=tuple(wrap) + (False,) * (3 - len(wrap)))
    except Exception as err:  # noqa: BLE001 - libtpu raises plain RuntimeErrors
        raise RuntimeError(f"Cannot describe TPU topology {name} ({err}). The dry run needs libtpu: "
                           f"pip install -e .[tpu-aot]") from err
    devs = list(topo.devices)
    expected = math.prod(shape) * num_slices
    if len(devs) != expected:
        raise RuntimeError(f"{name} × {num_slices} gave {len(devs)} devices, expected {expected}")
    return c, devs
