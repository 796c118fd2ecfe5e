"""A dense probe of frozen patch features: per-patch linear classification of composed scenes into the category of
the object covering each patch (or background), beside the same probe on each patch's raw pixels."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from vlm_jax.evals.probe import ridge_predict


@dataclass
class DenseSet:
    """Scenes with a class per patch (0: background) for fitting and for scoring."""

    train_images: np.ndarray  # float32 [N, S, S, 3] in [-1, 1]
    train_labels: np.ndarray  # int [N, gh, gw]
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: list[str]  # background first


def mean_iou(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
    """Intersection over union averaged over the classes present in `labels` or `pred`."""
    ious = []
    for c in range(num_classes):
        union = np.sum((pred == c) | (labels == c))
        if union:
            ious.append(np.sum((pred == c) & (labels == c)) / union)
    return float(np.mean(ious))


def patch_pixels(images: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """[N·gh·gw, ph·pw·3]: each patch's raw pixels, in the ViT's row-major patch order."""
    n, h, w, c = images.shape
    gh, gw = grid
    x = images.reshape(n, gh, h // gh, gw, w // gw, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(n * gh * gw, -1)


class DenseProbeEvaluator:
    """Patch accuracy and mean IoU of a ridge probe on `tokens(params, images)` [N, gh·gw, D] per set, beside the
    probe on raw patch pixels and the majority-class rate."""

    def __init__(self, tokens: Callable[[Any, np.ndarray], np.ndarray], sets: dict[str, DenseSet]):
        self.tokens, self.sets = tokens, sets
        self._pixel: dict[str, dict[str, float]] = {}

    def _scores(self, train_x: np.ndarray, test_x: np.ndarray, s: DenseSet) -> dict[str, float]:
        k = len(s.class_names)
        pred, _, _ = ridge_predict(train_x, s.train_labels.ravel(), test_x, k)
        truth = s.test_labels.ravel()
        return {"patch_acc@1": float(np.mean(pred == truth)), "miou": mean_iou(pred, truth, k)}

    def __call__(self, params: Any, extra: Any) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, s in self.sets.items():
            tr, te = self.tokens(params, s.train_images), self.tokens(params, s.test_images)
            model = self._scores(tr.reshape(-1, tr.shape[-1]), te.reshape(-1, te.shape[-1]), s)
            if name not in self._pixel:
                grid = s.train_labels.shape[1:]
                self._pixel[name] = self._scores(patch_pixels(s.train_images, grid),
                                                 patch_pixels(s.test_images, grid), s)
            truth = s.test_labels.ravel()
            for metric, value in model.items():
                out[f"{name}/all/{metric}/model"] = value
                out[f"{name}/all/{metric}/pixel"] = self._pixel[name][metric]
            out[f"{name}/all/patch_acc@1/chance"] = float(np.max(np.bincount(truth)) / len(truth))
        return out
