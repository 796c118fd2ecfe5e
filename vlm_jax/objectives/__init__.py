"""Built-in objectives; importing this package registers them."""
from vlm_jax.objectives import (captioning, clippo, coca, contrastive, filip, flava, mae, nlip, otter,  # noqa: F401
                                pali, prefix_lm, siglip2)
