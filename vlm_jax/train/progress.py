"""Progress line (step, loss, samples/s, ETA) and JSONL metric logging."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import numpy as np


def _fmt_time(seconds: float) -> str:
    """'1h02m' / '3m05s' / '12s'."""
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class Progress:
    """Prints one line per log step with throughput measured since the previous line."""

    def __init__(self, total_steps: int, start_step: int, batch_size: int, stream: TextIO = sys.stdout,
                 enabled: bool = True):
        self.total, self.batch_size, self.stream, self.enabled = total_steps, batch_size, stream, enabled
        self._last_step, self._last_time = start_step, time.perf_counter()
        self._rates: list[float] = []

    def update(self, step: int, metrics: dict[str, float]) -> dict[str, float]:
        """Reports progress after `step` steps; returns the timing metrics it computed."""
        now = time.perf_counter()
        steps = step - self._last_step
        rate = steps * self.batch_size / max(now - self._last_time, 1e-9) if steps else 0.0
        self._last_step, self._last_time = step, now
        if steps:
            self._rates = (self._rates + [rate])[-5:]
        mean_rate = float(np.mean(self._rates)) if self._rates else 0.0
        eta = (self.total - step) * self.batch_size / mean_rate if mean_rate else float("nan")
        if self.enabled:
            extras = " | ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k.startswith("acc/"))
            line = (f"step {step:>6d}/{self.total} | loss {metrics.get('loss', float('nan')):.4f} | "
                    f"{mean_rate:7.1f} samples/s | ETA {_fmt_time(eta) if eta == eta else '?'}")
            print(line + (f" | {extras}" if extras else ""), file=self.stream, flush=True)
        return {"samples_per_sec": rate}


class JsonlWriter:
    """Appends one JSON object per call to `path` (only where `enabled`, i.e. process 0)."""

    def __init__(self, path: str | Path, enabled: bool = True):
        self.path, self.enabled = Path(path), enabled
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict[str, Any]) -> None:
        """Writes a record; numpy scalars become floats."""
        if not self.enabled:
            return
        clean = {k: (v.item() if hasattr(v, "item") else v) for k, v in record.items()}
        with self.path.open("a") as f:
            f.write(json.dumps(clean) + "\n")


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Reads every record of a JSONL file."""
    with Path(path).open() as f:
        return [json.loads(line) for line in f if line.strip()]
