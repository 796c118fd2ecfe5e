"""TensorBoard event files without TensorFlow: TFRecord framing (masked CRC-32C) around hand-encoded `Event`
protos holding scalar and PNG image summaries.

A run writes one file per process start; a resumed run first writes a SessionLog START at its first new step, so
TensorBoard drops what an interrupted attempt logged after the checkpoint it resumed from (as metrics.jsonl does).
"""
from __future__ import annotations

import io
import math
import socket
import struct
import time
from pathlib import Path
from typing import Any

import numpy as np

from vlm_jax.tfrecord import crc32c, masked_crc  # noqa: F401  (re-exported)


def _varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, wire: int, payload: bytes) -> bytes:
    return _varint(number << 3 | wire) + payload


def _bytes_field(number: int, data: bytes) -> bytes:
    return _field(number, 2, _varint(len(data)) + data)


def _event(step: int, *, summary: bytes = b"", file_version: str = "", session_start: bool = False,
           wall_time: float | None = None) -> bytes:
    """An `Event` proto: wall_time (1, double), step (2), file_version (3), summary (5), session_log (7)."""
    out = _field(1, 1, struct.pack("<d", time.time() if wall_time is None else wall_time)) + _field(2, 0, _varint(step))
    if file_version:
        out += _bytes_field(3, file_version.encode())
    if summary:
        out += _bytes_field(5, summary)
    if session_start:
        out += _bytes_field(7, _field(1, 0, _varint(1)))  # SessionLog.status = START
    return out


def scalar_value(tag: str, value: float) -> bytes:
    """A `Summary.Value` with tag (1) and simple_value (2, float32)."""
    return _bytes_field(1, _bytes_field(1, tag.encode()) + _field(2, 5, struct.pack("<f", value)))


def image_value(tag: str, image: np.ndarray) -> bytes:
    """A `Summary.Value` with tag (1) and image (4): height, width, colorspace, PNG bytes."""
    from PIL import Image

    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    buf = io.BytesIO()
    Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).save(buf, format="PNG")
    h, w, c = image.shape
    img = (_field(1, 0, _varint(h)) + _field(2, 0, _varint(w)) + _field(3, 0, _varint(c))
           + _bytes_field(4, buf.getvalue()))
    return _bytes_field(1, _bytes_field(1, tag.encode()) + _bytes_field(4, img))


def grid(images: np.ndarray, columns: int = 8, pad: int = 2) -> np.ndarray:
    """uint8 [H', W', 3] tiling of float images in [-1, 1] (or uint8) [N, H, W, 3], white between tiles."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        images = np.clip(np.rint((images.astype(np.float32) + 1) * 127.5), 0, 255).astype(np.uint8)
    n, h, w, c = images.shape
    cols = min(columns, n)
    rows = math.ceil(n / cols)
    out = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 255, np.uint8)
    for i, im in enumerate(images):
        r, q = divmod(i, cols)
        out[pad + r * (h + pad):pad + r * (h + pad) + h, pad + q * (w + pad):pad + q * (w + pad) + w] = im
    return out


class EventWriter:
    """Appends summaries to `<logdir>/events.out.tfevents.<time>.<host>` (only where `enabled`)."""

    def __init__(self, logdir: str | Path, enabled: bool = True, resume_step: int = 0):
        self.enabled = enabled
        self.path = None
        if not enabled:
            return
        Path(logdir).mkdir(parents=True, exist_ok=True)
        self.path = Path(logdir) / f"events.out.tfevents.{int(time.time()):d}.{socket.gethostname()}.vlm_jax"
        self._file = open(self.path, "ab")
        self._write(_event(0, file_version="brain.Event:2"))
        if resume_step:
            self._write(_event(resume_step + 1, session_start=True))
        self._file.flush()

    def _write(self, event: bytes) -> None:
        header = struct.pack("<Q", len(event))
        self._file.write(header + struct.pack("<I", masked_crc(header)) + event + struct.pack("<I", masked_crc(event)))

    def record(self, record: dict[str, Any]) -> None:
        """Every number of a metrics.jsonl record as a scalar "<split>/<key>" at its step."""
        if not self.enabled or "step" not in record:
            return
        split = record.get("split", "train")
        values = b""
        for key, value in record.items():
            if key in ("step", "split") or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            values += scalar_value(f"{split}/{key}", float(value))
        if values:
            self._write(_event(int(record["step"]), summary=values))
            self._file.flush()

    def image(self, step: int, tag: str, image: np.ndarray) -> None:
        """One uint8 image [H, W, C] under `tag`."""
        if self.enabled:
            self._write(_event(step, summary=image_value(tag, image)))
            self._file.flush()

    def close(self) -> None:
        if self.enabled and not self._file.closed:
            self._file.close()
