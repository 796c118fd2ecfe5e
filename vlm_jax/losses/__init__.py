"""Loss functions by name."""
from vlm_jax.losses.contrastive import LOSSES as CONTRASTIVE_LOSSES, infonce_loss, sigmoid_loss  # noqa: F401


def get_contrastive_loss(name: str):
    """Returns a contrastive loss by name, naming the valid ones on error."""
    if name not in CONTRASTIVE_LOSSES:
        raise ValueError(f"Unknown contrastive loss '{name}'; valid: {sorted(CONTRASTIVE_LOSSES)}")
    return CONTRASTIVE_LOSSES[name]

from vlm_jax.losses.distributed import contrastive_loss  # noqa: E402  (memory-efficient kernels, one API)
from vlm_jax.losses.filip import filip_loss, filip_similarity  # noqa: E402
