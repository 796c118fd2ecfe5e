"""The second study of issue 16: CLIP (softmax InfoNCE) vs SigLIP (sigmoid) across batch sizes 32 … 1024 at equal
samples seen (196,608 pairs), 3 seeds per point, on emoji with the mini study's xs model; evaluated on the held-out
OpenMoji drawings.

  scripts/vlm python -m vlm_jax.tools.sweep experiments/sweeps/emoji_clip_vs_siglip_batch.py --dir runs/batch run
  bash benchmarks/studies/emoji_clip_vs_siglip_batch.sh          (run, collect, table and plot; about 45 min here)

The learning rate follows the square-root rule for Adam from 1e-3 at batch 256 (Malladi et al. 2022); warmup is
min(200, steps / 10) as in every small run. Seeds vary slowest, so an interrupted study has whole seeds first.
`:quick` divides the samples seen by 16 (a smoke test of the grid).
"""
from vlm_jax.scaling.sweep import two_tower_size

BATCHES = (32, 64, 128, 256, 512, 1024)
SAMPLES = 196_608  # 6144 steps at batch 32, 192 at batch 1024
SEEDS = (0, 1, 2)
XS = (64, 2, 64, 1, 64)  # image width, depth, text width, depth, embedding dim (0.29M parameters)


def get_sweep(arg=None):
    """`arg`: "quick" for 16× fewer samples seen."""
    samples = SAMPLES // (16 if arg == "quick" else 1)
    return dict(
        base="experiments/emoji_two_tower.py",
        axes=dict(
            seed={str(s): [f"seed={s}"] for s in SEEDS},
            loss={name: {"arg": f"loss={name}"} for name in ("clip", "siglip")},
            batch={str(b): {"arg": f"batch={b},steps={samples // b}",
                            "overrides": [f"optim.lr={1e-3 * (b / 256) ** 0.5:.6g}"]} for b in BATCHES},
        ),
        overrides=["evals.sets=['emoji']", *two_tower_size(*XS)],
    )
