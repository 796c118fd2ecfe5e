"""Data-path throughput on this machine: emoji rendering, augmentation, the grain train pipeline.

Run: scripts/vlm python benchmarks/data_throughput.py   → prints and writes benchmarks/data_throughput.md
"""
import itertools
import os
import time
from pathlib import Path

import numpy as np
from absl import flags

from vlm_jax.config import load_config
from vlm_jax.data import augment, emoji, emoji_tfds, pipeline
from vlm_jax.data.image_text import PREPARED_SIZE
from vlm_jax.data.tokenizer import Tokenizer

AUGMENT = load_config("experiments/emoji_two_tower.py").data.augment.to_dict()  # the default experiment's


def _rate(fn, n: int) -> float:
    """Items per second of `fn` called n times (after one warm-up call)."""
    fn()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return n / (time.perf_counter() - t)


def main() -> None:
    flags.FLAGS.mark_as_parsed()
    data_dir = os.environ.get("VLM_JAX_DATA_DIR", "data_cache")
    emoji_tfds.prepare(data_dir)
    concepts = emoji.select_concepts(PREPARED_SIZE)[:300]
    rows = []
    for style in ("noto", "openmoji"):
        it = itertools.cycle(c.emoji for c in concepts)
        rows.append((f"render {style} 64 px (uncached)", _rate(
            lambda: emoji.to_square_rgb(emoji.render_rgba(next(it), style), 64), 300)))
    img = emoji.render(concepts[0].emoji, "noto", 64)
    rng = np.random.default_rng(0)
    rows.append(("augment 64→32 px, one image at a time", _rate(lambda: augment.augment(img, rng, AUGMENT, 32), 1000)))
    batch = np.stack([img] * 256)
    params = np.stack([augment.draw(rng, AUGMENT, img.shape) for _ in batch])
    rows.append(("augment 64→32 px, batches of 256", 256 * _rate(lambda: augment.apply(batch, params, AUGMENT, 32), 20)))
    tok = Tokenizer(emoji_tfds.tokenizer_path(data_dir))
    for threads in (0, 2):
        ds = pipeline.make_train_dataset(data_dir, "train", tok, image_size=32, text_len=16, batch_size=256, seed=0,
                                         augment=AUGMENT, num_threads=threads,
                                         styles=("noto", "twitter", "facebook"))
        batches = iter(ds)
        rows.append((f"grain pipeline, 3 styles, batch 256, {threads} threads, first 10 batches (caches cold)",
                     256 * _rate(lambda: next(batches), 10)))
    table = ["| path | items/s |", "|---|---:|"] + [f"| {name} | {rate:,.0f} |" for name, rate in rows]
    text = "# Data throughput (2-core CPU)\n\n" + "\n".join(table) + "\n"
    print(text)
    Path(__file__).with_suffix(".md").write_text(text)


if __name__ == "__main__":
    main()
