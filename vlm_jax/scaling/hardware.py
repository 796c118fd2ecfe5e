"""Accelerator facts used by dry runs, MFU meters and step-time predictions (per chip, dense bf16)."""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

GiB = 2 ** 30


@dataclasses.dataclass(frozen=True)
class Chip:
    """One accelerator chip as JAX sees it (a TPU v4/v5p megacore chip is one JAX device)."""
    name: str
    hbm_bytes: int  # nominal; the runtime reserves a little (v5e: 15.75 GiB usable of 16)
    bf16_flops: float  # peak dense bf16 FLOP/s
    device_kinds: tuple[str, ...]  # jax.Device.device_kind strings
    cores_per_chip: int = 1  # TensorCores; TPU names like v5p-128 count cores


# Public spec sheets: cloud.google.com/tpu/docs/{v4,v5e,v5p,v6e}, NVIDIA A100/H100/H200 datasheets.
CHIPS: dict[str, Chip] = {c.name: c for c in (
    Chip("v4", 32 * GiB, 275e12, ("TPU v4",), cores_per_chip=2),
    Chip("v5e", 16 * GiB, 197e12, ("TPU v5 lite", "TPU v5e")),
    Chip("v5p", 95 * GiB, 459e12, ("TPU v5", "TPU v5p"), cores_per_chip=2),
    Chip("v6e", 32 * GiB, 918e12, ("TPU v6 lite", "TPU v6e")),
    Chip("a100", 80 * GiB, 312e12, ("NVIDIA A100-SXM4-80GB", "NVIDIA A100 80GB PCIe")),
    Chip("h100", 80 * GiB, 989e12, ("NVIDIA H100 80GB HBM3", "NVIDIA H100")),
    Chip("h200", 141 * 10 ** 9, 989e12, ("NVIDIA H200",)),
)}


def chip(name: str) -> Chip:
    """A chip by table name (v4, v5e, v5p, v6e, a100, h100, h200)."""
    key = name.lower()
    if key not in CHIPS:
        raise ValueError(f"Unknown chip {name!r}; known: {', '.join(CHIPS)}")
    return CHIPS[key]


def chip_for_device_kind(kind: str) -> Chip | None:
    """The chip whose device_kind matches (exactly, else by prefix); None when unknown (e.g. CPU)."""
    for c in CHIPS.values():
        if kind in c.device_kinds:
            return c
    for c in CHIPS.values():
        if any(kind.startswith(k) for k in c.device_kinds if k.startswith("NVIDIA")):
            return c
    return None


def measure_matmul_flops(dtype: str = "float32", n: int = 2048, reps: int = 5,
                         device: Any = None, clock: Callable[[], float] = time.perf_counter,
                         matmul: Callable[[Any, Any], Any] | None = None) -> float:
    """FLOP/s of an n×n×n matmul in `dtype` on `device` (default: the first), the best of `reps` timed calls.

    The CPU's MFU ceiling: machines of the same kind differ by 2× (198 vs 460 GFLOP/s fp32 seen), so a run
    measures its own instead of trusting a table.
    """
    import jax
    import jax.numpy as jnp

    device = device or jax.devices()[0]
    keys = jax.random.split(jax.random.key(0))
    a, b = (jax.device_put(jax.random.normal(k, (n, n), jnp.float32).astype(dtype), device) for k in keys)
    matmul = matmul or jax.jit(jnp.matmul)  # or another kernel, e.g. kernels.onednn's
    matmul(a, b).block_until_ready()  # compile
    best = float("inf")
    for _ in range(reps):
        t0 = clock()
        matmul(a, b).block_until_ready()
        best = min(best, clock() - t0)
    return 2.0 * n ** 3 / best


def peak_flops(devices: list[Any], dtype: str = "float32", probe: Callable[[str], float] | None = None) -> float:
    """Peak FLOP/s of `devices` together: the chip table for TPU/GPU (dense bf16), a matmul probe on CPU.

    Host CPU devices share the machine's cores, so each process's CPU devices count once (one probe) and
    processes add up.
    """
    kinds = {d.device_kind for d in devices}
    chips = [chip_for_device_kind(k) for k in kinds]
    if all(c is not None for c in chips) and chips:
        return sum(chip_for_device_kind(d.device_kind).bf16_flops for d in devices)
    if all(d.platform == "cpu" for d in devices):
        local = (probe or measure_matmul_flops)(dtype)
        return local * len({d.process_index for d in devices})
    return 0.0  # an accelerator missing from the table: MFU is not reported
