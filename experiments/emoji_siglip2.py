"""The SigLIP 2 recipe on emoji (Tschannen et al. 2025), with the two-tower run's towers, data and schedule:
SigLIP + LocCa decoder loss on composed scenes, and in the last 20% SILC self-distillation + TIPS masked prediction.

  --config experiments/emoji_siglip2.py                      SigLIP 2 (1.2k steps)
  --config experiments/emoji_siglip2.py:recipe=siglip        the same towers and budget, auxiliary losses off
  --config experiments/emoji_siglip2.py:size=test            tiny model for tests
"""
from pathlib import Path

from vlm_jax.config import config_args, load_config

HEADS = {  # LocCa decoder and the self-distillation projection head
    "test": (dict(width=32, depth=1, mlp_dim=64, num_heads=2), dict(hidden=32, bottleneck=16, prototypes=32)),
    "small": (dict(width=128, depth=2, mlp_dim=512, num_heads=4), dict(hidden=256, bottleneck=64, prototypes=256)),
}


def get_config(arg=None):
    """`arg`: recipe=siglip2|siglip, size=small|test, steps=N, batch=N."""
    arg = config_args(arg, recipe="siglip2", size="small", steps=1200, batch=256)
    if arg.recipe not in ("siglip2", "siglip"):
        raise ValueError(f"recipe must be 'siglip2' or 'siglip', got {arg.recipe!r}")
    two_tower = Path(__file__).with_name("emoji_two_tower.py")
    c = load_config(f"{two_tower}:loss=siglip,size={arg.size},steps={arg.steps},batch={arg.batch}")
    c.objective = "siglip2"
    c.loss = dict(name="sigmoid")
    if arg.recipe == "siglip":  # no decoder, projection head or teacher is built
        c.loss.update(locca_weight=0.0, distill_weight=0.0, masked_weight=0.0)
    else:
        decoder, head = HEADS[arg.size]
        c.model = dict(c.model, decoder=decoder, head=head)
    c.evals = dict(c.evals, probe_sets=["emoji", "fashion_mnist"] if arg.size != "test" else ["emoji"])
    return c
