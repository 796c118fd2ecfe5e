"""Interleaved image–text sequences from image–caption batches (Flamingo's M3W-style training data): every `m`
consecutive pairs become one sequence, <image 1> caption 1 <image 2> caption 2 …, the captions' tokens packed
end to end (each keeps its EOS) and padded at the end."""
from __future__ import annotations

from typing import Any

import numpy as np


def pack_interleaved(batch: dict[str, Any], m: int, pad_id: int) -> dict[str, np.ndarray]:
    """{"image": [B·m, …], "text": [B·m, L]} → {"image": [B, m, …], "text": [B, m·L] packed captions, "media":
    int32 [B, m·L], the pair each text position belongs to (padding: the last pair)}."""
    images, text = np.asarray(batch["image"]), np.asarray(batch["text"])
    if images.shape[0] % m:
        raise ValueError(f"a batch of {images.shape[0]} pairs does not split into sequences of {m}")
    b, length = images.shape[0] // m, text.shape[1]
    tokens = np.full((b, m * length), pad_id, text.dtype)
    media = np.full((b, m * length), m - 1, np.int32)
    for i in range(b):
        captions = [row[row != pad_id] for row in text[i * m:(i + 1) * m]]
        packed = np.concatenate(captions)
        tokens[i, :packed.size] = packed
        media[i, :packed.size] = np.repeat(np.arange(m, dtype=np.int32), [c.size for c in captions])
    return {"image": images.reshape(b, m, *images.shape[1:]), "text": tokens, "media": media}
