"""Box detection metrics, COCO-style (issue 33's open-vocabulary detection): IoU, average precision with COCO's
101-point interpolated precision, and AP@[.5:.95] — the mean over IoU thresholds 0.50, 0.55, …, 0.95 and over the
classes that have ground truth. Boxes are (top, left, bottom, right), bottom/right exclusive."""
from __future__ import annotations

from typing import Sequence

import numpy as np

THRESHOLDS = tuple(np.round(np.arange(0.5, 0.951, 0.05), 2))
RECALLS = np.linspace(0.0, 1.0, 101)  # COCO's recall points


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU float64 [N, M] of boxes a [N, 4] and b [M, 4]."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    top = np.maximum(a[:, None, 0], b[None, :, 0])
    left = np.maximum(a[:, None, 1], b[None, :, 1])
    bottom = np.minimum(a[:, None, 2], b[None, :, 2])
    right = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(bottom - top, 0, None) * np.clip(right - left, 0, None)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def match(det_boxes: Sequence[np.ndarray], det_scores: Sequence[np.ndarray], gt_boxes: Sequence[np.ndarray],
          threshold: float) -> tuple[np.ndarray, np.ndarray, int]:
    """One class over images: (scores, true-positive flags) of every detection in descending score order, and the
    ground-truth count. Per image, detections in score order each take the unmatched ground truth of highest IoU
    at or above `threshold` (COCO's greedy matching); otherwise they are false positives."""
    scores, hits, total = [], [], 0
    for boxes, s, gt in zip(det_boxes, det_scores, gt_boxes):
        boxes, s, gt = np.asarray(boxes).reshape(-1, 4), np.asarray(s, np.float64), np.asarray(gt).reshape(-1, 4)
        total += len(gt)
        order = np.argsort(-s, kind="stable")
        iou = box_iou(boxes[order], gt)
        taken = np.zeros(len(gt), bool)
        for row in range(len(order)):
            cand = np.where(taken, -1.0, iou[row]) if len(gt) else np.zeros(0)
            best = int(np.argmax(cand)) if len(gt) else -1
            hit = best >= 0 and cand[best] >= threshold
            if hit:
                taken[best] = True
            hits.append(hit)
        scores.extend(s[order])
    scores, hits = np.asarray(scores, np.float64), np.asarray(hits, bool)
    order = np.argsort(-scores, kind="stable")
    return scores[order], hits[order], total


def average_precision(hits: np.ndarray, total: int) -> float:
    """COCO's AP of detections in descending score order: precision made monotone (the best precision at any
    higher recall), read at recalls 0, 0.01, …, 1 (0 beyond the highest recall reached), averaged."""
    if total == 0:
        return float("nan")
    tp = np.cumsum(hits)
    fp = np.cumsum(~np.asarray(hits, bool))
    recall = tp / total
    precision = tp / np.maximum(tp + fp, 1)
    envelope = np.maximum.accumulate(precision[::-1])[::-1] if len(precision) else precision
    at = np.searchsorted(recall, RECALLS, side="left")
    return float(np.mean([envelope[i] if i < len(envelope) else 0.0 for i in at]))


def coco_ap(det_boxes: Sequence[Sequence[np.ndarray]], det_scores: Sequence[Sequence[np.ndarray]],
            gt_boxes: Sequence[Sequence[np.ndarray]],
            thresholds: Sequence[float] = THRESHOLDS) -> dict[str, float]:
    """AP@[.5:.95], AP50 and AP75 over classes: det_boxes[c][i] [N, 4] with det_scores[c][i] [N], and gt_boxes[c][i]
    [G, 4], for class c in image i. Classes without ground truth are left out of the mean."""
    per_class = []
    for boxes, scores, gt in zip(det_boxes, det_scores, gt_boxes):
        row = []
        for t in thresholds:
            _, hits, total = match(boxes, scores, gt, t)
            row.append(average_precision(hits, total))
        per_class.append(row)
    table = np.asarray(per_class, np.float64)
    keep = ~np.isnan(table[:, 0])
    if not keep.any():
        raise ValueError("no class has ground truth")
    table = table[keep]
    out = {"AP": float(table.mean())}
    for name, t in (("AP50", 0.5), ("AP75", 0.75)):
        if t in thresholds:
            out[name] = float(table[:, list(thresholds).index(t)].mean())
    return out
