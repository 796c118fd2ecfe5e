"""Built-in objectives; importing this package registers them."""
from vlm_jax.objectives import contrastive  # noqa: F401
