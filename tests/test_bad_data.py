"""Corrupt, empty and oversized images and empty / non-UTF-8 captions are skipped and counted, resumably."""
import io
import threading

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
        assert robust.pop_counts(a) == robust.pop_counts(b)  # the counters resume too


def _first_batch_within(stream, seconds: float) -> tuple[bool, BaseException | None]:
    """(finished, exception) of next(iter(stream)) run in a thread for at most `seconds`."""
    out: list[BaseException | None] = []

    def run():
        try:
            next(iter(stream))
            out.append(None)
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            out.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    return bool(out), (out[0] if out else None)


def test_a_source_of_only_bad_examples_stops_with_an_error_naming_it(data_dir):
    """Every example corrupt: the real pipeline raises after robust.MAX_CONSECUTIVE_BAD of them in a row instead
    of skipping forever, naming the source and what was wrong."""
    tok = Tokenizer(emoji_tfds.tokenizer_path(data_dir, PREPARED_SIZE, None))
    pre = pipeline._Preprocess(tok, image_size=16, text_len=8, augment={}, templates=["{}"])
    # 4096 examples: grain's index shuffle walks cycles, ~25 ms an index over 7 examples, 0.1 ms over 4096
    corrupt = [{"image": _png(16, 0)[:40], "name": b"cut off", "concept": i} for i in range(4096)]
    stream = pipeline.train_stream(corrupt, pre, batch_size=4, seed=0, num_threads=0, name="cut-off PNGs")
    finished, exc = _first_batch_within(stream, 60)
    assert finished, "still skipping after 60 s"
    assert isinstance(exc, robust.TooManyBadExamples), exc
    assert "cut-off PNGs" in str(exc) and f"{robust.MAX_CONSECUTIVE_BAD} " in str(exc) and "image" in str(exc)
    assert exc.counts == {"image": robust.MAX_CONSECUTIVE_BAD, "image_size": 0, "caption": 0, "member": 0, "shard": 0}
    mixed = [dict(e, image=_png(16, 0)) if i % 7 == 3 else e for i, e in enumerate(corrupt)]  # one good in 7: runs
    few = pipeline.train_stream(mixed, pre, batch_size=4, seed=0, num_threads=0, name="mixed")
    assert _first_batch_within(few, 60) == (True, None)
