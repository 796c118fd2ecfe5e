"""Progress line (step, loss, samples/s, ETA) and JSONL metric logging."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence, TextIO

import numpy as np


def _fmt_time(seconds: float) -> str:
    """'1h02m' / '3m05s' / '12s'."""
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class Progress:
    """Prints one line per log step with throughput and MFU measured since the previous line.

    MFU = model FLOPs of the steps since the previous line ÷ elapsed seconds ÷ `peak_flops` (all devices); shown when
    both are known. A measured peak (a CPU probe) is low when another process held the cores while it ran; an
    interval above 100% then calls `reprobe` (if given) and keeps the larger peak, so one bad probe does not
    inflate the whole run. `flops_per_step`: one number, or [(first step, FLOPs per step)] for objectives whose steps
    change cost at given steps (SigLIP 2's late losses); step k (1-based) costs what its phase at k − 1 does.
    """

    def __init__(self, total_steps: int, start_step: int, batch_size: int, stream: TextIO = sys.stdout,
                 enabled: bool = True, flops_per_step: float | Sequence[tuple[int, float]] = 0.0,
                 peak_flops: float = 0.0, clock: Callable[[], float] = time.perf_counter,
                 reprobe: Callable[[], float] | None = None):
        self.total, self.batch_size, self.stream, self.enabled = total_steps, batch_size, stream, enabled
        self.phases = sorted(flops_per_step) if isinstance(flops_per_step, (list, tuple)) else [(0, flops_per_step)]
        self.flops_per_step = self.phases[0][1]
        self.peak_flops, self.clock, self.reprobe = peak_flops, clock, reprobe
        self._last_step, self._last_time = start_step, clock()
        self._rates: list[float] = []
        self.mfus: list[float] = []  # one per progress line

    def flops_between(self, a: int, b: int) -> float:
        """Model FLOPs of steps a + 1 … b."""
        total = 0.0
        for i, (start, flops) in enumerate(self.phases):
            stop = self.phases[i + 1][0] if i + 1 < len(self.phases) else float("inf")
            total += flops * max(0, min(b, stop) - max(a, start))  # steps k with k − 1 in [start, stop)
        return total

    def steady_mfu(self) -> float | None:
        """Median MFU of the progress lines after the first (whose interval includes compilation)."""
        values = self.mfus[1:] or self.mfus
        return float(np.median(values)) if values else None

    def update(self, step: int, metrics: dict[str, float]) -> dict[str, float]:
        """Reports progress after `step` steps; returns the timing metrics it computed."""
        now = self.clock()
        steps = step - self._last_step
        seconds = max(now - self._last_time, 1e-9)
        rate = steps * self.batch_size / seconds if steps else 0.0
        self._last_step, self._last_time = step, now
        if steps:
            self._rates = (self._rates + [rate])[-5:]
        mean_rate = float(np.mean(self._rates)) if self._rates else 0.0
        eta = (self.total - step) * self.batch_size / mean_rate if mean_rate else float("nan")
        timing = {"samples_per_sec": rate}
        if steps:
            timing["step_seconds"] = seconds / steps
        flops = self.flops_between(step - steps, step)
        if flops and steps:
            timing["flops_per_sec"] = flops / seconds
            if self.peak_flops:
                if timing["flops_per_sec"] > self.peak_flops and self.reprobe is not None:
                    self.peak_flops = max(self.peak_flops, float(self.reprobe()))
                    timing["peak_flops"] = self.peak_flops
                    self._last_time = self.clock()  # the probe's own time is not the next interval's
                timing["mfu"] = timing["flops_per_sec"] / self.peak_flops
                self.mfus.append(timing["mfu"])
        if self.enabled:
            extras = " | ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k.startswith("acc/"))
            mfu = f" | MFU {100 * timing['mfu']:4.1f}%" if "mfu" in timing else ""
            line = (f"step {step:>6d}/{self.total} | loss {metrics.get('loss', float('nan')):.4f} | "
                    f"{mean_rate:7.1f} samples/s{mfu} | ETA {_fmt_time(eta) if eta == eta else '?'}")
            print(line + (f" | {extras}" if extras else ""), file=self.stream, flush=True)
        return timing


class JsonlWriter:
    """Appends one JSON object per call to `path` (only where `enabled`, i.e. process 0)."""

    def __init__(self, path: str | Path, enabled: bool = True, mirror: Any = None):
        # mirror: also receives every record (`record(dict)`, e.g. the TensorBoard EventWriter)
        self.path, self.enabled, self.mirror = Path(path), enabled, mirror
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict[str, Any]) -> None:
        """Writes a record; numpy scalars become floats."""
        if not self.enabled:
            return
        clean = {k: (v.item() if hasattr(v, "item") else v) for k, v in record.items()}
        with self.path.open("a") as f:
            f.write(json.dumps(clean) + "\n")
        if self.mirror is not None:
            self.mirror.record(clean)


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Reads every record of a JSONL file."""
    with Path(path).open() as f:
        return [json.loads(line) for line in f if line.strip()]
