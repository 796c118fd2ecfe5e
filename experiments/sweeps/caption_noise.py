"""Issue 31's caption-noise study: how CLIP, SigLIP, ALIGN's recipe and NLIP degrade when 0, 20 or 50% of the training
captions name another concept (`data.caption_noise`), at the contrastive family's budget (emoji two-tower,
1,200 steps), 3 seeds; evaluation sets stay clean.

  scripts/vlm python -m vlm_jax.tools.sweep experiments/sweeps/caption_noise.py --dir benchmarks/studies/caption_noise_runs run

`:quick` trains 60 steps.
"""
from vlm_jax.config import config_args

METHODS = ("clip", "siglip", "align", "nlip")
NOISE = (0.0, 0.2, 0.5)
SEEDS = (0, 1, 2)


def get_sweep(arg=None):
    """`arg`: quick (60-step runs)."""
    arg = config_args(arg, quick=False)
    steps = 60 if arg.quick else 1200
    return dict(
        base="experiments/emoji_contrastive_family.py",
        axes=dict(seed={str(s): {"arg": f"seed={s}"} for s in SEEDS},
                  noise={f"{int(100 * n)}": {"arg": f"noise={n}"} for n in NOISE},
                  method={m: {"arg": f"method={m},steps={steps}"} for m in METHODS}),
    )
