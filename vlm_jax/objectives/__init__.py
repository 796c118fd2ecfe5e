"""Built-in objectives; importing this package registers them."""
from vlm_jax.objectives import (alip, blip2, captioning, clippo, coca, contrastive, declip, filip, flava,  # noqa: F401
                                kelip, language_model, llip, mae, nlip, oner, otter, pali, prefix_lm, pyramidclip, raclip, siglip2,
                                vision_prefix, zerovl)
