"""Issue 30's comparison: SigLIP on Tux Paint stamps at fixed resolution (32 px squares, 16 patches) vs NaFlex at one
budget (16 patches, native aspect) vs NaFlex with the budget drawn per batch from 9/16/25 (SigLIP 2's recipe), the
same model, captions, augmentation and schedule, 3 seeds; NaFlex runs are evaluated at 9, 16, 25 and 36 patches.

  scripts/vlm python -m vlm_jax.tools.sweep experiments/sweeps/tuxpaint_naflex_vs_fixed.py --dir runs/naflex run
  bash benchmarks/studies/tuxpaint_naflex_vs_fixed.sh            (run, collect and table; ~7 min per run here)

Seeds vary slowest, so an interrupted study has whole seeds first. `:quick` trains 100 steps (a smoke test).
"""

MODES = {"fixed": "mode=fixed", "naflex16": "mode=naflex,budgets=16", "naflex9-25": "mode=naflex,budgets=9+16+25"}
SEEDS = (0, 1, 2)


def get_sweep(arg=None):
    """`arg`: "quick" for 100-step runs."""
    steps = 100 if arg == "quick" else 1500
    return dict(
        base="experiments/tuxpaint_naflex.py",
        axes=dict(seed={str(s): {"arg": f"seed={s}"} for s in SEEDS},
                  mode={name: {"arg": f"{spec},steps={steps}"} for name, spec in MODES.items()}),
    )
