"""Built-in objectives; importing this package registers them."""
from vlm_jax.objectives import (captioning, clippo, coca, contrastive, filip, flava, kelip, llip, mae,  # noqa: F401
                                nlip, otter, pali, prefix_lm, siglip2, zerovl)
