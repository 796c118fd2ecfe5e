"""The grain training stream over shard sources: each source read in its `EpochOrder` (prefetching the next
window's remote shards), several sources mixed by weight, images decoded and cropped at the model resolution
(JPEG decoded at a reduced scale when the crop allows), captions tokenised, bad samples skipped and counted per
source, batched with the batched augmentation; optionally in `worker_count` grain worker processes."""
from __future__ import annotations

import io
import math
import sys
import warnings
from typing import Any, Callable, Sequence

import grain
import numpy as np
from PIL import Image

from vlm_jax.data import augment, robust
from vlm_jax.data.pipeline import AugmentingMap, read_options
from vlm_jax.data.shards.order import EpochOrder
from vlm_jax.data.shards.reader import ShardReader


class SourceStream:
    """One source's samples in its epoch order, endless (a grain random-access source); records carry the
    source's name under `robust.SOURCE`."""

    def __init__(self, reader: ShardReader, order: EpochOrder):
        self.reader, self.order = reader, order
        self._window: tuple[int, int] | None = None

    def __len__(self) -> int:
        return sys.maxsize

    def __getitem__(self, position: int) -> dict[str, Any]:
        window = self.order.window_of(position)
        if window != self._window:  # entering a window: fetch the next one's remote shards in the background
            self._window = window
            nxt = self.order.shards_of_window(window[0], window[1] + 1) or self.order.shards_of_window(window[0] + 1, 0)
            self.reader.storage.prefetch([self.reader.urls[s] for s in nxt])
        shard, i = self.order(position)
        return {**self.reader.read(shard, i), robust.SOURCE: self.reader.name}


def decode_crop(data: Any, rng: np.random.Generator, crop: dict[str, Any] | None, size: int,
                max_pixels: int) -> tuple[np.ndarray | None, str | None]:
    """uint8 [size, size, 3]: a random-resized crop (`crop` {scale, ratio}, as `augment.draw` draws it; None: the
    centred square) of the encoded image, decoded at the smallest JPEG scale that keeps the crop ≥ `size` pixels;
    else (None, reason)."""
    if not isinstance(data, bytes) or not data:
        return None, "image"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
                if w * h > max_pixels:  # from the header, before any pixel is decoded
                    return None, "image_size"
                if crop is not None:
                    p = augment.draw(rng, {"crop": crop}, (h, w))
                    cw, ch = min(p[augment.P["w"]], w), min(p[augment.P["h"]], h)
                    x0 = min(max(p[augment.P["x0"]], 0.0), w - cw)
                    y0 = min(max(p[augment.P["y0"]], 0.0), h - ch)
                else:
                    cw = ch = float(min(w, h))
                    x0, y0 = (w - cw) / 2, (h - ch) / 2
                if im.format == "JPEG":  # DCT scaling: decode at 1/2, 1/4 or 1/8 when the crop stays ≥ size px
                    im.draft("RGB", (math.ceil(w * size / cw), math.ceil(h * size / ch)))
                f = im.size[0] / w
                rgb = im.convert("RGB")
                box = (x0 * f, y0 * f, (x0 + cw) * f, (y0 + ch) * f)
                return np.asarray(rgb.resize((size, size), Image.Resampling.BICUBIC, box=box)), None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning):
        return None, "image"


class WebPreprocess(AugmentingMap):
    """Raw sample → {"image": uint8 crop, "augment": the rest of the augmentation's parameters, "text": model
    input, FIELD: int32}; the crop happens at decode time, flips and colour ops in `collate` a batch at a time.
    Batches carry uint8 images (a quarter of float32's bytes through worker shared memory and to the device);
    the train step maps them to [-1, 1]."""

    uint8_images = True

    def __init__(self, encode: Callable[[list[str]], np.ndarray], image_size: int, augment_cfg: dict[str, Any],
                 templates: Sequence[str], fields: Sequence[str], max_pixels: int):
        self.encode, self.image_size = encode, image_size
        cfg = dict(augment_cfg)
        self.crop = cfg.pop("crop", None)
        self.augment = cfg  # what `collate` still applies (the crop is done)
        self.templates, self.fields, self.max_pixels = tuple(templates), tuple(fields), max_pixels

    def random_map(self, ex: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        """One sample → model inputs, or {robust.BAD: reason} (with its source)."""
        source = {robust.SOURCE: ex[robust.SOURCE]} if robust.SOURCE in ex else {}
        if robust.BAD in ex:
            return {robust.BAD: ex[robust.BAD], **source}
        caption = robust.decode_caption(ex["caption"])
        if caption is None:
            return {robust.BAD: "caption", **source}
        image, reason = decode_crop(ex["image"], rng, self.crop, self.image_size, self.max_pixels)
        if image is None:
            return {robust.BAD: reason, **source}
        params = augment.draw(rng, self.augment, image.shape)
        template = self.templates[int(rng.integers(len(self.templates)))] if len(self.templates) > 1 else \
            self.templates[0]
        text = self.encode([template.format(caption)])[0]
        return {"image": image, "augment": params, "text": text, **{f: ex[f] for f in self.fields}, **source}


def shard_stream(readers: Sequence[ShardReader], weights: Sequence[float] | None, preprocess: WebPreprocess, *,
                 batch_size: int, seed: int, process_index: int = 0, process_count: int = 1, chunk: int = 0,
                 window: int = 8, num_threads: int = -1, prefetch: int = 8, worker_count: int = 0,
                 worker_buffer: int = 2, max_bad: int = robust.MAX_CONSECUTIVE_BAD) -> grain.IterDataset:
    """This process's endless, batched training stream over the sources (weights: mixing proportions, default
    each source's sample count). Deterministic given the seed, the process count and `worker_count`; exactly
    resumable from the iterator state."""
    streams = [grain.MapDataset.source(SourceStream(r, EpochOrder(r.sizes, seed + 7919 * k, process_index,
                                                                  process_count, chunk, window)))
               for k, r in enumerate(readers)]
    if len(streams) == 1:
        ds = streams[0]
    else:
        props = list(weights) if weights else [float(r.sizes.sum()) for r in readers]
        ds = grain.MapDataset.mix(streams, props)
    # per-process augmentation seeds: the positions of different processes' streams coincide
    ds = ds.random_map(preprocess, seed=(seed + 1) * 65537 + process_index)
    ds = ds.to_iter_dataset(read_options(num_threads, prefetch))
    names = tuple(r.name for r in readers)
    ds = robust.SkipBad(ds, "+".join(names), max_bad, sources=names)
    ds = ds.batch(batch_size, drop_remainder=True, batch_fn=preprocess.collate)
    if worker_count > 0:
        from absl import flags

        if not flags.FLAGS.is_parsed():  # grain's workers read absl flags; entry points without absl.app don't parse
            flags.FLAGS.mark_as_parsed()
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count, per_worker_buffer_size=worker_buffer),
                            worker_init_fn=robust.set_worker)
    return ds
