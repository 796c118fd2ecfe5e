"""Semantic segmentation metrics (issue 33's open-vocabulary segmentation): per-class IoU from a confusion matrix
and their mean over the classes present in the ground truth or the prediction."""
from __future__ import annotations

import numpy as np


def confusion(pred: np.ndarray, gt: np.ndarray, num_classes: int, ignore: int | None = None) -> np.ndarray:
    """int64 [C, C]: rows ground truth, columns prediction, over all pixels (those labelled `ignore` left out)."""
    pred, gt = np.asarray(pred).ravel(), np.asarray(gt).ravel()
    keep = np.ones_like(gt, bool) if ignore is None else gt != ignore
    if ((gt[keep] < 0) | (gt[keep] >= num_classes) | (pred[keep] < 0) | (pred[keep] >= num_classes)).any():
        raise ValueError(f"labels must lie in 0 … {num_classes - 1}")
    return np.bincount(gt[keep] * num_classes + pred[keep], minlength=num_classes ** 2).reshape(num_classes,
                                                                                               num_classes)


def mean_iou(pred: np.ndarray, gt: np.ndarray, num_classes: int, ignore: int | None = None) -> dict[str, float]:
    """{"mIoU": mean over classes with any pixel in the ground truth or the prediction, "pixel_acc", "iou/<c>"}."""
    cm = confusion(pred, gt, num_classes, ignore).astype(np.float64)
    inter = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - inter
    present = union > 0
    iou = np.where(present, inter / np.where(present, union, 1), np.nan)
    out = {"mIoU": float(np.nanmean(iou)) if present.any() else float("nan"),
           "pixel_acc": float(inter.sum() / max(cm.sum(), 1))}
    out.update({f"iou/{c}": float(iou[c]) for c in range(num_classes) if present[c]})
    return out
