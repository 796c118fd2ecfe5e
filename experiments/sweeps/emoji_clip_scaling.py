"""The mini scaling study on this machine: CLIP on emoji, 4 model sizes × 3 training budgets (issue 16), evaluated
on the held-out OpenMoji drawings (error = 1 − cross-style non-flag top-1).

  scripts/vlm python -m vlm_jax.tools.sweep experiments/sweeps/emoji_clip_scaling.py --dir runs/scaling status
  scripts/vlm python -m vlm_jax.tools.sweep experiments/sweeps/emoji_clip_scaling.py --dir runs/scaling run
  scripts/vlm python -m vlm_jax.tools.sweep experiments/sweeps/emoji_clip_scaling.py --dir runs/scaling collect

`:quick` shrinks the budgets 10× (a smoke test of the whole grid).
"""
from vlm_jax.scaling.sweep import two_tower_size

# (image width, image depth, text width, text depth, embedding dim); heads = width / 32, MLP = 4 × width
# m is the default run's model; l costs ~2× m per step, xs ~0.1×
SIZES = {"xs": (64, 2, 64, 1, 64), "s": (96, 3, 96, 2, 96), "m": (128, 4, 128, 2, 128), "l": (160, 5, 160, 3, 160)}
STEPS = (300, 1000, 2500)  # × batch 256: 77k, 256k and 640k samples seen


def get_sweep(arg=None):
    """`arg`: "quick" for 10× shorter budgets."""
    scale = 10 if arg == "quick" else 1
    return dict(
        base="experiments/emoji_two_tower.py",
        axes=dict(size={name: two_tower_size(*dims) for name, dims in SIZES.items()},
                  steps={f"{s // scale}": [f"total_steps={s // scale}"] for s in STEPS}),
        overrides=["evals.sets=['emoji']"],
    )
