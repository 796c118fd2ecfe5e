"""Built-in objectives; importing this package registers them."""
from vlm_jax.objectives import clippo, contrastive  # noqa: F401
