"""Fashion-MNIST from the Debian `dataset-fashion-mnist` package (MIT, Zalando), for zero-shot evals."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
from PIL import Image

from vlm_jax.data.base import memo_by_content

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASS_NAMES: tuple[str, ...] = (
    "t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot",
)
_FILES = {"train": "train", "test": "t10k"}


def _read_idx(path: Path, offset: int) -> np.ndarray:
    """Raw bytes of a gzipped idx file after its header."""
    with gzip.open(path, "rb") as f:
        return np.frombuffer(f.read(), np.uint8, offset=offset)


def load_fashion_mnist(split: str = "test", root: str | Path = FASHION_MNIST_DIR) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 28, 28], labels int64 [N]) for split 'train' (60k) or 'test' (10k)."""
    if split not in _FILES:
        raise ValueError(f"split must be one of {tuple(_FILES)}, got {split!r}")
    root = Path(root)
    images, labels = (root / f"{_FILES[split]}-{k}-ubyte.gz" for k in ("images-idx3", "labels-idx1"))
    if not images.exists() or not labels.exists():
        raise FileNotFoundError(
            f"Fashion-MNIST not found in {root}: install the Debian package "
            "(apt-get install dataset-fashion-mnist)"
        )
    x = _read_idx(images, 16).reshape(-1, 28, 28)
    y = _read_idx(labels, 8).astype(np.int64)
    assert len(x) == len(y), "image/label count mismatch"
    return x, y


@memo_by_content
def to_rgb(images: np.ndarray, size: int, invert: bool = True) -> np.ndarray:
    """uint8 [N, 28, 28] -> uint8 [N, size, size, 3]; `invert` gives a dark object on white (emoji style)."""
    out = np.empty((len(images), size, size, 3), np.uint8)
    for i, im in enumerate(images):
        im = 255 - im if invert else im
        if im.shape != (size, size):
            im = np.asarray(Image.fromarray(im).resize((size, size), Image.Resampling.BICUBIC))
        out[i] = im[..., None]
    return out
