"""ViT size variants by name ("B/16", "So400m/14"): plain numbers that configs and models both read (imports
nothing from the model code, so an experiment config can size a model without importing JAX/Flax modules)."""
from __future__ import annotations

from typing import Any

# name: (width, depth, mlp_dim, num_heads)
VARIANTS: dict[str, tuple[int, int, int, int]] = {
    "Ti": (192, 12, 768, 3),
    "S": (384, 12, 1536, 6),
    "M": (512, 12, 2048, 8),
    "B": (768, 12, 3072, 12),
    "L": (1024, 24, 4096, 16),
    "So400m": (1152, 27, 4304, 16),
    "H": (1280, 32, 5120, 16),
    "g": (1408, 40, 6144, 16),
    "G": (1664, 48, 8192, 16),
}


def parse_variant(variant: str) -> dict[str, Any]:
    """Parses "B/16" (or "B") into ViT size kwargs; patch_size only when given."""
    name, _, patch = variant.partition("/")
    if name not in VARIANTS:
        raise ValueError(f"Unknown ViT variant {name!r}; valid: {', '.join(VARIANTS)}")
    width, depth, mlp_dim, num_heads = VARIANTS[name]
    out: dict[str, Any] = dict(width=width, depth=depth, mlp_dim=mlp_dim, num_heads=num_heads)
    if patch:
        out["patch_size"] = (int(patch), int(patch))
    return out
