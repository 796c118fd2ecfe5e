"""Issue 33's detection and segmentation metrics against brute-force references: IoU by counting pixels, COCO's
interpolated AP by its definition (the best precision at any rank reaching each recall point), matching on hand
cases, and mIoU by per-pixel loops."""
from __future__ import annotations

import numpy as np
import pytest

from vlm_jax.evals.detection import THRESHOLDS, average_precision, box_iou, coco_ap, match
from vlm_jax.evals.segmentation import mean_iou


def _pixels(box, size=12):
    m = np.zeros((size, size), bool)
    m[box[0]:box[2], box[1]:box[3]] = True
    return m


def test_box_iou_counts_pixels():
    rng = np.random.default_rng(0)
    boxes = []
    while len(boxes) < 12:
        t, l = rng.integers(0, 10, 2)
        b, r = t + rng.integers(1, 12 - t), l + rng.integers(1, 12 - l)
        boxes.append((t, l, b, r))
    boxes = np.asarray(boxes)
    got = box_iou(boxes, boxes[::-1])
    for i, a in enumerate(boxes):
        for j, b in enumerate(boxes[::-1]):
            pa, pb = _pixels(a), _pixels(b)
            assert got[i, j] == pytest.approx((pa & pb).sum() / (pa | pb).sum(), abs=1e-12)


def _ap_by_definition(hits, total):
    """Mean over r in {0, .01, …, 1} of the best precision among ranks whose recall reaches r (0 if none)."""
    vals = []
    for r in np.linspace(0, 1, 101):
        best = 0.0
        for k in range(1, len(hits) + 1):
            tp = sum(hits[:k])
            if tp / total >= r - 1e-12:
                best = max(best, tp / k)
        vals.append(best)
    return float(np.mean(vals))


def test_average_precision_is_cocos_definition():
    assert average_precision(np.array([True, True]), 2) == 1.0
    assert average_precision(np.array([False, True]), 1) == pytest.approx(0.5)
    assert average_precision(np.array([True]), 2) == pytest.approx(51 / 101)  # recall 0.5 reached, 1.0 never
    rng = np.random.default_rng(1)
    for _ in range(50):
        n, total = int(rng.integers(1, 12)), int(rng.integers(1, 8))
        hits = rng.random(n) < 0.5
        while hits.sum() > total:
            hits[np.flatnonzero(hits)[0]] = False
        assert average_precision(hits, total) == pytest.approx(_ap_by_definition(list(hits), total), abs=1e-12)


def test_matching_takes_the_best_unmatched_ground_truth_in_score_order():
    gt = np.array([[0, 0, 10, 10], [0, 6, 10, 16]])
    dets = np.array([[0, 5, 10, 15], [0, 0, 10, 9]])  # the first overlaps both (more of the second); the second the first
    scores, hits, total = match([dets], [np.array([0.9, 0.8])], [gt], 0.5)
    assert total == 2 and scores.tolist() == [0.9, 0.8] and hits.tolist() == [True, True]
    # the lower-scored detection now wants the ground truth the first one took: a false positive
    dets = np.array([[0, 5, 10, 15], [0, 6, 10, 15]])
    _, hits, _ = match([dets], [np.array([0.9, 0.8])], [gt[1:]], 0.5)
    assert hits.tolist() == [True, False]
    # across images, detections are ranked by score together
    scores, hits, total = match([dets[:1], dets[1:]], [np.array([0.3]), np.array([0.7])], [gt[1:], gt[:1]], 0.5)
    assert scores.tolist() == [0.7, 0.3] and hits.tolist() == [False, True] and total == 2


def test_coco_ap_averages_thresholds_and_classes_with_ground_truth():
    gt = [[np.array([[0, 0, 10, 10]])], [np.zeros((0, 4))]]  # class 1 has no ground truth: left out
    det = [[np.array([[0, 0, 10, 8]])], [np.array([[0, 0, 5, 5]])]]  # IoU 0.8 with the class-0 box
    score = [[np.array([0.9])], [np.array([0.5])]]
    out = coco_ap(det, score, gt)
    want = np.mean([1.0 if t <= 0.8 + 1e-12 else 0.0 for t in THRESHOLDS])
    assert out["AP"] == pytest.approx(want) and out["AP50"] == 1.0 and out["AP75"] == 1.0
    assert len(THRESHOLDS) == 10 and THRESHOLDS[0] == 0.5 and THRESHOLDS[-1] == 0.95


def test_mean_iou_by_pixel_loops():
    rng = np.random.default_rng(2)
    gt = rng.integers(0, 4, (3, 9, 9))
    pred = np.where(rng.random(gt.shape) < 0.6, gt, rng.integers(0, 5, gt.shape))
    gt[0, 0, :3] = 255  # ignored pixels
    out = mean_iou(pred, gt, 5, ignore=255)
    ious = []
    for c in range(5):
        inter = union = 0
        for p, g in zip(pred.ravel(), gt.ravel()):
            if g == 255:
                continue
            inter += p == c and g == c
            union += p == c or g == c
        if union:
            ious.append(inter / union)
            assert out[f"iou/{c}"] == pytest.approx(inter / union, abs=1e-12)
    assert out["mIoU"] == pytest.approx(np.mean(ious), abs=1e-12)
    with pytest.raises(ValueError, match="labels must lie in"):
        mean_iou(pred, gt, 4, ignore=255)
