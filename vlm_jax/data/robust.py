"""Bad examples never crash a run: decoding that rejects corrupt, empty or oversized images and captions,
and a stream stage that drops rejected examples while counting them (the counts are checkpointed). A source
that yields nothing but bad examples stops the run with `TooManyBadExamples` instead of being skipped forever.
The same stage counts kept examples whose tokens were cut to length (`TRUNCATED`)."""
from __future__ import annotations

import io
import warnings
from typing import Any

import grain
import numpy as np
from PIL import Image

REASONS = ("image", "image_size", "caption")  # metrics: data/skipped/<reason>
FIELDS = ("prompt", "text")  # metrics: data/truncated/<field> (kept examples whose tokens were cut)
BAD = "_bad"  # key marking a rejected example (its value: the reason)
TRUNCATED = "_truncated"  # key of a kept example: the FIELDS whose tokens were cut to length
COUNTS = "_skipped"  # key carrying the running counts (REASONS then FIELDS) in each kept example
# Consecutive bad examples after which a stream stops: a healthy source with a fraction f of bad examples has
# such a run with probability f ** 1000 at any point (f = 0.9: 2e-46), so this only trips on a broken source.
MAX_CONSECUTIVE_BAD = 1000


class TooManyBadExamples(RuntimeError):
    """A source gave `MAX_CONSECUTIVE_BAD` bad examples in a row (counts: by reason)."""

    def __init__(self, message: str, counts: dict[str, int]):
        super().__init__(message)
        self.counts = counts


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
    """Drops examples marked bad, counting them by reason, and counts kept examples' truncated fields; the counts
    are part of the iterator state. Raises `TooManyBadExamples` after `max_bad` bad examples in a row."""

    def __init__(self, parent: grain.DatasetIterator, name: str, max_bad: int):
        super().__init__(parent)
        self.name, self.max_bad = name, max_bad
        self.counts = {r: 0 for r in REASONS}
        self.truncated = {f: 0 for f in FIELDS}

    def __next__(self) -> dict[str, Any]:
        run: dict[str, int] = {}
        while True:
            element = next(self._parent)
            reason = element.get(BAD)
            if reason is None:
                break
            self.counts[reason] = self.counts.get(reason, 0) + 1
            run[reason] = run.get(reason, 0) + 1
            if sum(run.values()) >= self.max_bad:
                raise TooManyBadExamples(
                    f"{self.max_bad} bad examples in a row from {self.name or 'the training source'} "
                    f"({', '.join(f'{r}: {n}' for r, n in sorted(run.items()))}): is the data corrupt or "
                    f"unreadable? (robust.MAX_CONSECUTIVE_BAD)", {r: run.get(r, 0) for r in REASONS})
        element = dict(element)
        for field in element.pop(TRUNCATED, ()):
            self.truncated[field] += 1
        counts = [self.counts[r] for r in REASONS] + [self.truncated[f] for f in FIELDS]
        return {**element, COUNTS: np.array(counts, np.int64)}

    def get_state(self) -> dict[str, Any]:
        return {"parent": self._parent.get_state(), "skipped": dict(self.counts), "truncated": dict(self.truncated)}

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state["parent"])
        self.counts = {r: int(state["skipped"].get(r, 0)) for r in REASONS}
        self.truncated = {f: int(state.get("truncated", {}).get(f, 0)) for f in FIELDS}  # absent in older checkpoints


class SkipBad(grain.IterDataset):
    """IterDataset stage: see `_SkipIterator`. `name` says which source a `TooManyBadExamples` error is about."""

    def __init__(self, parent: grain.IterDataset, name: str = "", max_bad: int = MAX_CONSECUTIVE_BAD):
        super().__init__(parent)
        self.name, self.max_bad = name, max_bad

    def __iter__(self) -> _SkipIterator:
        return _SkipIterator(self._parent.__iter__(), self.name, self.max_bad)


def pop_counts(batch: dict[str, Any]) -> dict[str, float]:
    """Removes the counters from a host batch; returns {"data/skipped/<reason>": n, "data/truncated/<field>": n}."""
    counts = batch.pop(COUNTS, None)
    if counts is None:
        return {}
    latest = np.asarray(counts).max(axis=0)  # counts only grow: the batch's last example has the total
    names = [f"data/skipped/{r}" for r in REASONS] + [f"data/truncated/{f}" for f in FIELDS]
    return {name: float(c) for name, c in zip(names, latest)}
