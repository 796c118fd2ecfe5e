"""Accelerator facts used by dry runs, MFU meters and step-time predictions (per chip, dense bf16)."""
from __future__ import annotations

import dataclasses

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
