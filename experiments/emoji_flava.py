"""FLAVA-style pretraining on emoji (Singh et al. 2022) and its parts as presets, with the two-tower run's image
tower, data and schedule: zero-shot, retrieval, probes, held-out image–text matching and masked-token accuracy.

  --config experiments/emoji_flava.py                      contrastive + MIM + MLM + MMM + ITM, weights 1 (1.2k steps)
  --config experiments/emoji_flava.py:parts=itm            contrastive + ITM with hard negatives (ALBEF-like)
  --config experiments/emoji_flava.py:parts=mlm            masked language modelling alone (text tower)
  --config experiments/emoji_flava.py:size=test            tiny model for tests
"""
from pathlib import Path

from vlm_jax.config import config_args, load_config

PRESETS = {  # parts trained (weight 1; the others 0)
    "flava": ("contrastive", "mim", "mlm", "mmm", "itm"),
    "itm": ("contrastive", "itm"),
    "mlm": ("mlm",),
    "contrastive": ("contrastive",),
}
HEADS = {  # fusion encoder and MAE decoder
    "test": dict(width=32, depth=1, mlp_dim=64, num_heads=2),
    "small": dict(width=128, depth=2, mlp_dim=512, num_heads=4),
}


def get_config(arg=None):
    """`arg`: parts=flava|itm|mlm|contrastive, size=small|test, steps=N, batch=N."""
    arg = config_args(arg, parts="flava", size="small", steps=1200, batch=256)
    if arg.parts not in PRESETS:
        raise ValueError(f"parts must be one of {sorted(PRESETS)}, got {arg.parts!r}")
    two_tower = Path(__file__).with_name("emoji_two_tower.py")
    c = load_config(f"{two_tower}:size={arg.size},steps={arg.steps},batch={arg.batch}")
    c.objective = "flava"
    text = dict(c.model.text, causal=False, pool_type="gap", vocab_size=0)  # bidirectional: MLM sees both sides
    c.model = dict(image=dict(c.model.image), text=text, fusion=HEADS[arg.size], decoder=HEADS[arg.size],
                   embed_dim=c.model.embed_dim, temperature_init=c.model.temperature_init)
    c.loss = dict(name="infonce", **{f"{p}_weight": float(p in PRESETS[arg.parts])
                                     for p in ("contrastive", "mim", "mlm", "mmm", "itm")})
    c.evals = dict(c.evals, probe_sets=["emoji", "fashion_mnist"])
    if arg.size == "test":
        c.evals.sets, c.evals.probe_sets = ["emoji"], ["emoji"]
    return c
