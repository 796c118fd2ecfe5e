"""Issue 28: the default CLIP run trained from webdataset shards of its data (make_shards, JPEG) against the
prepared TFDS data (PNG), 3 seeds each at the README's 1.2k-step budget; evaluated on the held-out OpenMoji drawings.

  bash benchmarks/studies/emoji_shards_vs_tfds.sh           (make the shards, run, collect, table; ~35 min here)

Same examples, captions, templates and augmentation; what differs is the image path: JPEG (quality 95) decoded
and cropped at decode time (crops clipped to the image) vs PNG cropped in the batched augmentation (crops may zoom
out onto a white canvas). Seeds vary slowest.
"""

SHARDS = "data_cache/emoji_shards"  # written by the study script (make_shards --dataset emoji --format wds)
SEEDS = (0, 1, 2)


def get_sweep(arg=None):
    """`arg`: unused."""
    return dict(
        base="experiments/emoji_two_tower.py",
        axes=dict(
            seed={str(s): [f"seed={s}"] for s in SEEDS},
            source={"tfds": {"arg": "steps=1200"}, "shards": {"arg": f"steps=1200,shards={SHARDS}"}},
        ),
        overrides=["evals.sets=['emoji']"],
    )
