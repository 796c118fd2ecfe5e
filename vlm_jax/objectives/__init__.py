"""Built-in objectives; importing this package registers them."""
from vlm_jax.objectives import (captioning, clippo, coca, contrastive, filip, flava, mae, otter, pali,  # noqa: F401
                                prefix_lm, siglip2)
