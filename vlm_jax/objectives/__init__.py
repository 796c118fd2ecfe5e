"""Built-in objectives; importing this package registers them."""
from vlm_jax.objectives import captioning, clippo, coca, contrastive, flava, mae, pali, prefix_lm, siglip2  # noqa: F401
