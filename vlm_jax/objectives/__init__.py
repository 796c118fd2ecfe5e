"""Built-in objectives; importing this package registers them."""
from vlm_jax.objectives import (captioning, clippo, coca, contrastive, filip, flava, llip, mae, nlip,  # noqa: F401
                                otter, pali, prefix_lm, siglip2)
