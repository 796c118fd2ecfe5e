"""Bad examples never crash a run: decoding that rejects corrupt, empty or oversized images and captions,
and a stream stage that drops rejected examples while counting them (the counts are checkpointed)."""
from __future__ import annotations

import io
import warnings
from typing import Any

import grain
import numpy as np
from PIL import Image

REASONS = ("image", "image_size", "caption")  # metrics: data/skipped/<reason>
BAD = "_bad"  # key marking a rejected example (its value: the reason)
COUNTS = "_skipped"  # key carrying the running counts in each kept example


def decode_image(data: Any, max_pixels: int) -> tuple[np.ndarray | None, str | None]:
    """uint8 [H, W, 3] from encoded bytes (or an array), else (None, reason)."""
    if isinstance(data, np.ndarray):
        ok = data.ndim == 3 and data.shape[-1] == 3 and data.size > 0
        return (data.astype(np.uint8), None) if ok else (None, "image")
    if not data:
        return None, "image"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                if im.width * im.height > max_pixels:  # read from the header, before decoding any pixels
                    return None, "image_size"
                return np.asarray(im.convert("RGB")), None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning):
        return None, "image"


def decode_caption(data: Any) -> str | None:
    """Caption text from bytes/str; None when not UTF-8 or empty after stripping."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            return None
    text = str(data).strip()
    return text or None


class _SkipIterator(grain.DatasetIterator):
    """Drops examples marked bad, counting them by reason; the counts are part of the iterator state."""

    def __init__(self, parent: grain.DatasetIterator):
        super().__init__(parent)
        self.counts = {r: 0 for r in REASONS}

    def __next__(self) -> dict[str, Any]:
        while True:
            element = next(self._parent)
            reason = element.get(BAD)
            if reason is None:
                break
            self.counts[reason] = self.counts.get(reason, 0) + 1
        return {**element, COUNTS: np.array([self.counts[r] for r in REASONS], np.int64)}

    def get_state(self) -> dict[str, Any]:
        return {"parent": self._parent.get_state(), "skipped": dict(self.counts)}

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state["parent"])
        self.counts = {r: int(state["skipped"].get(r, 0)) for r in REASONS}


class SkipBad(grain.IterDataset):
    """IterDataset stage: see `_SkipIterator`."""

    def __iter__(self) -> _SkipIterator:
        return _SkipIterator(self._parent.__iter__())


def pop_counts(batch: dict[str, Any]) -> dict[str, float]:
    """Removes the skip counters from a host batch; returns {"data/skipped/<reason>": count}."""
    counts = batch.pop(COUNTS, None)
    if counts is None:
        return {}
    latest = np.asarray(counts).max(axis=0)  # counts only grow: the batch's last example has the total
    return {f"data/skipped/{r}": float(c) for r, c in zip(REASONS, latest)}
