"""Ranking metrics (top-k accuracy, retrieval recall) and the raw-pixel nearest-neighbour baseline."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def topk_hits(scores: np.ndarray, labels: np.ndarray, ks: Sequence[int] = (1, 5)) -> dict[int, np.ndarray]:
    """Per-row booleans: is the true label among the k highest scores (ties counted pessimistically)."""
    scores = np.asarray(scores, np.float64)
    true = scores[np.arange(len(labels)), labels][:, None]
    rank = np.sum(scores > true, axis=1) + np.sum(scores == true, axis=1) - 1  # ties rank against us
    return {k: rank < k for k in ks}


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit norm."""
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def pixel_features(images: np.ndarray) -> np.ndarray:
    """Flattened pixels standardised per image (zero mean, unit norm): dot product = correlation."""
    flat = np.asarray(images, np.float32).reshape(len(images), -1)
    flat = flat - flat.mean(axis=1, keepdims=True)
    return l2_normalize(flat)


def chance_topk(num_classes: int, k: int) -> float:
    """Top-k accuracy of a uniform random ranking."""
    return min(k, num_classes) / num_classes
