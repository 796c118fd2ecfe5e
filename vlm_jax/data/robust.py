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

# metrics: data/skipped/<reason>, and data/skipped/<source>/<reason> for named sources (shards): "member" is a
# sample missing from a truncated shard, "shard" a sample of a shard that could not be read
REASONS = ("image", "image_size", "caption", "member", "shard")
FIELDS = ("prompt", "text")  # metrics: data/truncated/<field> (kept examples whose tokens were cut)
BAD = "_bad"  # key marking a rejected example (its value: the reason)
TRUNCATED = "_truncated"  # key of a kept example: the FIELDS whose tokens were cut to length
COUNTS = "_skipped"  # key carrying the running counts ({"skipped/…": n, "truncated/…": n}) in each kept example
SOURCE = "_source"  # key naming an example's source (several weighted shard sources): counted per source
# Consecutive bad examples after which a stream stops: a healthy source with a fraction f of bad examples has
# such a run with probability f ** 1000 at any point (f = 0.9: 2e-46), so this only trips on a broken source.
MAX_CONSECUTIVE_BAD = 1000


_WORKER = [0]  # this process's grain worker index (set by `set_worker` in worker processes)


def set_worker(index: int, count: int) -> None:
    """grain `worker_init_fn`: tags this worker's counts so the trainer can add up every worker's."""
    _WORKER[0] = int(index)


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
    """Drops examples marked bad, counting them by reason (and by reason per named source), and counts kept
    examples' truncated fields; the counts are part of the iterator state. Raises `TooManyBadExamples` after
    `max_bad` bad examples in a row from one source (`name` for unnamed examples)."""

    def __init__(self, parent: grain.DatasetIterator, name: str, max_bad: int, sources: tuple[str, ...] = ()):
        super().__init__(parent)
        self.name, self.max_bad, self.sources = name, max_bad, sources
        self.counts = {r: 0 for r in REASONS} | {f"{s}/{r}": 0 for s in sources for r in REASONS}
        self.truncated = {f: 0 for f in FIELDS}
        self.runs: dict[str, dict[str, int]] = {}

    def __next__(self) -> dict[str, Any]:
        while True:
            element = next(self._parent)
            source = element.get(SOURCE) or ""
            reason = element.get(BAD)
            if reason is None:
                self.runs.pop(source, None)
                break
            self.counts[reason] = self.counts.get(reason, 0) + 1
            if source:
                self.counts[f"{source}/{reason}"] = self.counts.get(f"{source}/{reason}", 0) + 1
            run = self.runs.setdefault(source, {})
            run[reason] = run.get(reason, 0) + 1
            if sum(run.values()) >= self.max_bad:
                what = f"source {source!r}" if source else (self.name or "the training source")
                raise TooManyBadExamples(
                    f"{self.max_bad} bad examples in a row from {what} "
                    f"({', '.join(f'{r}: {n}' for r, n in sorted(run.items()))}): is the data corrupt or "
                    f"unreadable? (robust.MAX_CONSECUTIVE_BAD)", {r: run.get(r, 0) for r in REASONS})
        element = dict(element)
        element.pop(SOURCE, None)
        for field in element.pop(TRUNCATED, ()):
            self.truncated[field] += 1
        counts = {f"skipped/{k}": np.int64(n) for k, n in self.counts.items()}
        counts.update({f"truncated/{f}": np.int64(n) for f, n in self.truncated.items()})
        counts["worker"] = np.int64(_WORKER[0])
        return {**element, COUNTS: counts}

    def get_state(self) -> dict[str, Any]:
        return {"parent": self._parent.get_state(), "skipped": dict(self.counts), "truncated": dict(self.truncated),
                "runs": {s: dict(r) for s, r in self.runs.items()}}

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state["parent"])
        self.counts = {k: int(state["skipped"].get(k, 0)) for k in self.counts}  # keys absent in older checkpoints: 0
        self.truncated = {f: int(state.get("truncated", {}).get(f, 0)) for f in FIELDS}
        self.runs = {s: {r: int(n) for r, n in run.items()} for s, run in state.get("runs", {}).items()}


class SkipBad(grain.IterDataset):
    """IterDataset stage: see `_SkipIterator`. `name` says which source a `TooManyBadExamples` error is about."""

    def __init__(self, parent: grain.IterDataset, name: str = "", max_bad: int = MAX_CONSECUTIVE_BAD,
                 sources: tuple[str, ...] = ()):
        super().__init__(parent)
        self.name, self.max_bad, self.sources = name, max_bad, tuple(sources)

    def __iter__(self) -> _SkipIterator:
        return _SkipIterator(self._parent.__iter__(), self.name, self.max_bad, self.sources)


def pop_counts(batch: dict[str, Any], per_worker: dict[int, dict[str, float]] | None = None) -> dict[str, float]:
    """Removes the counters from a host batch; returns {"data/skipped/<reason>": n, "data/skipped/<source>/<reason>":
    n, "data/truncated/<field>": n}: this batch's worker's totals, or with `per_worker` (kept by the caller across
    batches) the sum of every worker's latest totals."""
    counts = dict(batch.pop(COUNTS, None) or {})
    if not counts:
        return {}
    worker = int(np.asarray(counts.pop("worker", 0)).max())
    # counts only grow: the batch's largest is the total so far
    latest = {f"data/{name}": float(np.asarray(c).max()) for name, c in counts.items()}
    if per_worker is None:
        return latest
    per_worker[worker] = latest
    return {k: sum(w.get(k, 0.0) for w in per_worker.values()) for k in latest}
