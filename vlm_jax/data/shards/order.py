"""The sample order: a pure function of (seed, process, position), so a stream resumes exactly from its position
alone. Each epoch shuffles *chunks* (runs of `chunk` consecutive samples of a shard; 0 = whole shards), groups
`window` consecutive chunks and permutes the samples within each group; process p of P reads the p-th contiguous
P-th of the epoch, so hosts read different shards, and every sample is read once per epoch by exactly one process.
`chunk=1, window=1` is a full global shuffle; whole-shard chunks keep a remote shard's reads within one window."""
from __future__ import annotations

import functools
from typing import Sequence

import numpy as np


class EpochOrder:
    """Maps a process's stream position to (shard, sample index in the shard)."""

    def __init__(self, sizes: Sequence[int], seed: int, process_index: int = 0, process_count: int = 1,
                 chunk: int = 0, window: int = 8):
        sizes = np.asarray(sizes, np.int64)
        if sizes.sum() < process_count:
            raise ValueError(f"{int(sizes.sum())} samples cannot feed {process_count} processes")
        shard, start, length = [], [], []
        for s, n in enumerate(sizes.tolist()):
            step = chunk if chunk > 0 else max(n, 1)
            for lo in range(0, n, step):
                shard.append(s)
                start.append(lo)
                length.append(min(step, n - lo))
        self.chunk_shard = np.asarray(shard, np.int64)
        self.chunk_start = np.asarray(start, np.int64)
        self.chunk_len = np.asarray(length, np.int64)
        self.total = int(sizes.sum())
        self.seed, self.window = int(seed), max(1, int(window))
        self.lo = process_index * self.total // process_count
        self.hi = (process_index + 1) * self.total // process_count

    @property
    def epoch_length(self) -> int:
        """Samples this process reads per epoch (processes differ by at most one)."""
        return self.hi - self.lo

    @functools.lru_cache(maxsize=2)
    def _epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(chunks in this epoch's order, first epoch position of each window)."""
        perm = np.random.default_rng([self.seed, epoch, 0]).permutation(len(self.chunk_len))
        lens = self.chunk_len[perm]
        bounds = np.concatenate([[0], np.cumsum(lens)])
        window_starts = bounds[::self.window]
        if window_starts[-1] != self.total:
            window_starts = np.append(window_starts, self.total)
        return perm, window_starts

    @functools.lru_cache(maxsize=4)
    def _window(self, epoch: int, w: int) -> tuple[np.ndarray, np.ndarray]:
        """(chunk ids of window w, its sample permutation) of the epoch."""
        perm, _ = self._epoch(epoch)
        chunks = perm[w * self.window:(w + 1) * self.window]
        n = int(self.chunk_len[chunks].sum())
        return chunks, np.random.default_rng([self.seed, epoch, 1 + w]).permutation(n)

    def window_of(self, position: int) -> tuple[int, int]:
        """(epoch, window) holding stream position `position`."""
        epoch, j = divmod(position, self.epoch_length)
        _, starts = self._epoch(epoch)
        return epoch, int(np.searchsorted(starts, self.lo + j, side="right")) - 1

    def shards_of_window(self, epoch: int, w: int) -> list[int]:
        """The shards window w of the epoch reads (empty past the epoch's last window)."""
        perm, starts = self._epoch(epoch)
        if w >= len(starts) - 1:
            return []
        return sorted(set(self.chunk_shard[perm[w * self.window:(w + 1) * self.window]].tolist()))

    def __call__(self, position: int) -> tuple[int, int]:
        """(shard, index within the shard) of this process's `position`-th sample (any position ≥ 0)."""
        epoch, j = divmod(position, self.epoch_length)
        _, starts = self._epoch(epoch)
        g = self.lo + j
        w = int(np.searchsorted(starts, g, side="right")) - 1
        chunks, sample_perm = self._window(epoch, w)
        k = int(sample_perm[g - starts[w]])
        ends = np.cumsum(self.chunk_len[chunks])
        c = int(np.searchsorted(ends, k, side="right"))
        offset = k - (int(ends[c - 1]) if c else 0)
        chunk = int(chunks[c])
        return int(self.chunk_shard[chunk]), int(self.chunk_start[chunk]) + offset
