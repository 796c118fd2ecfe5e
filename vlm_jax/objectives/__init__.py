"""Built-in objectives; importing this package registers them."""
from vlm_jax.objectives import (captioning, clippo, coca, contrastive, declip, filip, flava, kelip, llip,  # noqa: F401
                                mae, nlip, otter, pali, prefix_lm, siglip2, zerovl)
