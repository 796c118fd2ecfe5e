"""Built-in objectives; importing this package registers them."""
from vlm_jax.objectives import (captioning, clippo, coca, contrastive, flava, mae, otter, pali, prefix_lm,  # noqa: F401
                                siglip2)
