"""The safetensors file format with NumPy alone: read any float / int tensor (bf16 widened to float32), write
float32 / int tensors the way the `safetensors` library does (header padded to 8 bytes, tensors in name order)."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

READ = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
        "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
WRITE = {np.dtype(v): k for k, v in READ.items()}


class SafetensorsError(ValueError):
    """A file that is not a readable safetensors file."""


def read_header(path: str | Path) -> tuple[dict, int]:
    """(header without __metadata__, byte offset of the data) of a .safetensors file, reading only the header."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise SafetensorsError(f"{path}: {len(head)} bytes, too short for a safetensors file")
        (size,) = struct.unpack("<Q", head)
        if size > 100 * 2**20:
            raise SafetensorsError(f"{path}: header of {size} bytes; not a safetensors file")
        try:
            header = json.loads(f.read(size))
        except ValueError as exc:
            raise SafetensorsError(f"{path}: unreadable safetensors header: {exc}") from exc
    header.pop("__metadata__", None)
    return header, 8 + size


def read(path: str | Path) -> dict[str, np.ndarray]:
    """Every tensor of a .safetensors file as a NumPy array (bf16 → float32), memory-mapped, then copied once."""
    header, start = read_header(path)
    data = np.memmap(path, np.uint8, mode="r")
    out: dict[str, np.ndarray] = {}
    for name, info in header.items():
        lo, hi = info["data_offsets"]
        raw = data[start + lo:start + hi]
        if info["dtype"] == "BF16":  # the high 16 bits of a float32
            arr = (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
        elif info["dtype"] in READ:
            arr = np.array(raw.view(READ[info["dtype"]]))
        else:
            raise SafetensorsError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
        expected = int(np.prod(info["shape"], dtype=np.int64))
        if arr.size != expected:
            raise SafetensorsError(f"{path}: tensor {name!r} holds {arr.size} values, its shape {info['shape']} "
                                   f"needs {expected} (truncated file?)")
        out[name] = arr.reshape(tuple(info["shape"]))
    return out


def write(path: str | Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> Path:
    """Writes `tensors` (C-contiguous, little-endian) as a .safetensors file; returns its path."""
    header: dict = {"__metadata__": dict(metadata)} if metadata else {}
    offset, arrays = 0, []
    for name in sorted(tensors):
        arr = np.asarray(tensors[name])  # (not ascontiguousarray: it turns a 0-d tensor into shape (1,))
        if not arr.flags.c_contiguous:
            arr = arr.copy(order="C")
        if arr.dtype not in WRITE:
            raise SafetensorsError(f"tensor {name!r}: cannot write dtype {arr.dtype}")
        arr = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
        header[name] = {"dtype": WRITE[arr.dtype.newbyteorder("=")], "shape": list(arr.shape),
                        "data_offsets": [offset, offset + arr.nbytes]}
        offset += arr.nbytes
        arrays.append(arr)
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    path = Path(path)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for arr in arrays:
            f.write(arr.tobytes())
    return path
