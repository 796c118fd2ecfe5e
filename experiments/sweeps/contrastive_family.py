"""Issue 31's comparison: every method of experiments/emoji_contrastive_family.py (the CLIP and SigLIP baselines and
the family's methods) at one budget — the emoji two-tower small run, 1,200 steps at batch 256 — 3 seeds each.

  scripts/vlm python -m vlm_jax.tools.sweep experiments/sweeps/contrastive_family.py --dir benchmarks/studies/contrastive_family_runs run
  bash benchmarks/studies/contrastive_family.sh              (run, collect and table)

Seeds vary slowest, so an interrupted study has whole seeds first. `:quick` trains 60 steps (a smoke test);
`:methods=otter+filip` restricts the methods.
"""
from vlm_jax.config import config_args

METHODS = ("clip", "siglip", "align", "otter", "filip", "nlip", "laclip", "llip", "kelip", "zerovl", "declip", "alip",
           "pyramidclip", "raclip", "oner")
SEEDS = (0, 1, 2)


def get_sweep(arg=None):
    """`arg`: quick (60-step runs), methods=a+b (a subset of METHODS)."""
    arg = config_args(arg, quick=False, methods="+".join(METHODS))
    methods = [m for m in str(arg.methods).split("+") if m]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ValueError(f"unknown methods {unknown}; valid: {list(METHODS)}")
    steps = 60 if arg.quick else 1200
    return dict(
        base="experiments/emoji_contrastive_family.py",
        axes=dict(seed={str(s): {"arg": f"seed={s}"} for s in SEEDS},
                  method={m: {"arg": f"method={m},steps={steps}"} for m in methods}),
    )
