"""Corrupt, empty and oversized images and empty / non-UTF-8 captions are skipped and counted, resumably."""
import io

import numpy as np
from PIL import Image

from vlm_jax.data import emoji_tfds, pipeline, robust
from vlm_jax.data.image_text import PREPARED_SIZE
from vlm_jax.data.tokenizer import Tokenizer


def _png(size: int, value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


GOOD = [{"image": _png(16, 10 * i), "name": f"thing {i}".encode(), "concept": i} for i in range(12)]
BAD = [
    {"image": b"", "name": b"zero bytes", "concept": 100},  # → image
    {"image": _png(16, 0)[:40], "name": b"truncated png", "concept": 101},  # → image
    {"image": b"GIF89a not really", "name": b"garbage", "concept": 102},  # → image
    {"image": _png(64, 0), "name": b"too big", "concept": 103},  # → image_size (limit 32×32 below)
    {"image": _png(16, 0), "name": b"   ", "concept": 104},  # → caption
    {"image": _png(16, 0), "name": b"\xff\xfe\xfa", "concept": 105},  # → caption
]
WANT = {"image": 3, "image_size": 1, "caption": 2}


def _stream(data_dir):
    tok = Tokenizer(emoji_tfds.tokenizer_path(data_dir, PREPARED_SIZE, None))
    pre = pipeline._Preprocess(tok, image_size=16, text_len=8, augment={}, templates=["{}"], max_pixels=32 * 32)
    return pipeline.train_stream(GOOD + BAD, pre, batch_size=4, seed=0, num_threads=0)


def test_decoders_reject_bad_inputs():
    assert robust.decode_image(_png(8, 3), 10_000)[0].shape == (8, 8, 3)
    assert robust.decode_image(b"", 10_000) == (None, "image")
    assert robust.decode_image(_png(8, 3)[:30], 10_000) == (None, "image")
    assert robust.decode_image(_png(200, 3), 100 * 100) == (None, "image_size")
    assert robust.decode_caption("  a cat ".encode()) == "a cat"
    assert robust.decode_caption(b"\xc3\x28") is None and robust.decode_caption(b"\n") is None


def test_bad_examples_are_skipped_counted_and_resumed(data_dir):
    it = iter(_stream(data_dir))
    seen, stats = [], {}
    for _ in range(9):  # 36 kept examples = 3 epochs of the 12 good ones; every bad one met 3 times
        batch = dict(next(it))
        stats = robust.pop_counts(batch) or stats
        assert batch["image"].shape == (4, 16, 16, 3) and batch["text"].shape == (4, 8)
        seen += batch["concept"].tolist()
    assert sorted(set(seen)) == list(range(12)) and len(seen) == 36
    # By the end of epoch 3 all 6 bad examples were met 3 times (maybe a few more from epoch 4's prefix).
    for reason, n in WANT.items():
        assert 3 * n <= stats[f"data/skipped/{reason}"] <= 4 * n, stats
    state = it.get_state()
    after = [dict(next(it)) for _ in range(3)]
    resumed = iter(_stream(data_dir))
    resumed.set_state(state)
    again = [dict(next(resumed)) for _ in range(3)]
    for a, b in zip(after, again):
        np.testing.assert_array_equal(a["concept"], b["concept"])
        np.testing.assert_array_equal(a[robust.COUNTS], b[robust.COUNTS])  # the counters resume too
