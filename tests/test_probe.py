"""Image-only probes: the ridge probe and its exact leave-one-out shortcut against refitting, kNN against a loop."""
import numpy as np
import pytest

from vlm_jax.evals.probe import (ProbeEvaluator, ProbeSet, knn_predict, linear_probe, ridge_fit,
                                 ridge_loo_accuracy, standardize)


def _blobs(rng, n, classes=4, dim=6, spread=1.5, centers=None):
    centers = rng.normal(size=(classes, dim)) * 2 if centers is None else centers
    y = rng.integers(0, len(centers), n)
    return centers[y] + rng.normal(size=(n, dim)) * spread, y


def test_ridge_fit_solves_the_penalised_least_squares():
    """Weights equal lstsq on the system stacked with √λ·I rows (the bias row unpenalised)."""
    rng = np.random.default_rng(0)
    x, y = _blobs(rng, 50)
    w = ridge_fit(x, y, 4, l2=3.0)
    a = np.concatenate([x, np.ones((50, 1))], 1)
    pen = np.sqrt(3.0) * np.eye(7)[:6]
    ref = np.linalg.lstsq(np.concatenate([a, pen]), np.concatenate([np.eye(4)[y], np.zeros((6, 4))]), rcond=None)[0]
    np.testing.assert_allclose(w, ref, atol=1e-10)


@pytest.mark.parametrize("l2", [1e-3, 1.0, 100.0])
def test_leave_one_out_shortcut_equals_refitting_without_each_example(l2):
    rng = np.random.default_rng(1)
    x, y = _blobs(rng, 40, spread=3.0)
    hits = []
    for i in range(40):
        rest = np.arange(40) != i
        w = ridge_fit(x[rest], y[rest], 4, l2)
        hits.append(np.argmax(np.append(x[i], 1.0) @ w) == y[i])
    assert ridge_loo_accuracy(x, y, 4, l2) == pytest.approx(np.mean(hits), abs=1e-12)
    assert 0.2 < np.mean(hits) < 1.0  # a task where examples are actually misclassified


def test_linear_probe_picks_the_strength_with_the_best_leave_one_out_accuracy():
    rng = np.random.default_rng(2)
    centers = rng.normal(size=(4, 6)) * 2
    x, y = _blobs(rng, 120, spread=2.5, centers=centers)
    tx, ty = _blobs(rng, 120, spread=2.5, centers=centers)
    grid = (1e-3, 1.0, 1e3, 1e6)
    res = linear_probe(x, y, tx, ty, 4, grid)
    tr, _ = standardize(x, tx)
    loo = [ridge_loo_accuracy(tr, y, 4, g) for g in grid]
    assert res["linear_l2"] == grid[int(np.argmax(loo))] and res["linear_loo"] == max(loo)
    w = ridge_fit(tr, y, 4, res["linear_l2"])
    _, te = standardize(x, tx)
    assert res["linear"] == np.mean(np.argmax(np.concatenate([te, np.ones((120, 1))], 1) @ w, 1) == ty)


def test_knn_is_a_similarity_weighted_vote_of_the_k_nearest():
    rng = np.random.default_rng(3)
    x, y = _blobs(rng, 200, classes=5, spread=2.0)
    q, _ = _blobs(rng, 30, classes=5, spread=2.0)
    k, temp = 7, 0.1
    got = knn_predict(x, y, q, 5, k, temp)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    for i, row in enumerate(q / np.linalg.norm(q, axis=1, keepdims=True)):
        sims = xn @ row
        votes = np.zeros(5)
        for j in np.argsort(-sims)[:k]:
            votes[y[j]] += np.exp(sims[j] / temp)
        assert got[i] == np.argmax(votes)


def test_probe_evaluator_reports_model_pixel_and_majority_chance():
    """Features that are the labels' one-hot codes probe perfectly; the pixel baseline and majority rate are there."""
    rng = np.random.default_rng(4)
    n, classes = 60, 3
    tr_y, te_y = rng.integers(0, classes, n), np.array([0] * 30 + [1] * 20 + [2] * 10)
    images = lambda y: np.repeat(y[:, None, None, None].astype(np.float32), 4, 1).repeat(4, 2).repeat(3, 3)  # noqa
    s = ProbeSet(images(tr_y), tr_y, images(te_y), te_y, classes,
                 pixel_train=rng.normal(size=(n, 4, 4, 3)), pixel_test=rng.normal(size=(60, 4, 4, 3)))
    onehot = lambda p, im: np.eye(classes)[im[:, 0, 0, 0].astype(int)] + 0.01 * rng.normal(size=(len(im), classes))  # noqa
    out = ProbeEvaluator(onehot, {"toy": s}, k=5)(None, None)
    assert out["toy/all/linear@1/model"] == 1.0 and out["toy/all/knn@1/model"] == 1.0
    assert out["toy/all/linear@1/chance"] == 0.5
    assert out["toy/all/knn@1/pixel"] < 0.8  # noise pixels carry no label


def test_mean_iou_and_patch_pixels():
    from vlm_jax.evals.dense import mean_iou, patch_pixels
    from vlm_jax.losses.masked import patchify

    rng = np.random.default_rng(5)
    pred, truth = rng.integers(0, 4, 200), rng.integers(0, 3, 200)
    ious = [np.sum((pred == c) & (truth == c)) / np.sum((pred == c) | (truth == c)) for c in range(4)]
    assert mean_iou(pred, truth, 5) == pytest.approx(np.mean(ious))  # class 4 appears in neither: not averaged
    images = rng.normal(size=(3, 16, 16, 3)).astype(np.float32)
    np.testing.assert_array_equal(patch_pixels(images, (2, 2)), np.asarray(patchify(images, (8, 8))).reshape(12, -1))


def test_labelled_scenes_mark_the_top_drawing_at_each_patch_centre():
    from vlm_jax.data.scenes import scenes_with_labels
    from vlm_jax.evals.dense import DenseProbeEvaluator, DenseSet

    rng = np.random.default_rng(6)
    objects = rng.integers(0, 200, (5, 20, 20, 3)).astype(np.uint8)  # no pure white: drawings are visible
    images, labels = scenes_with_labels(objects, np.arange(5), 40, 32, (4, 4), seed=0)
    for image, label in zip(images, labels):
        for gy in range(4):
            for gx in range(4):
                centre = image[gy * 8 + 4, gx * 8 + 4]
                assert (label[gy, gx] == 0) == bool(np.all(centre == 1.0))
    assert set(np.unique(labels)) <= set(range(6)) and (labels > 0).mean() > 0.2
    s = DenseSet(images, labels, images, labels, ["bg", *"abcde"])
    onehot = lambda p, im: np.eye(6)[labels] if len(im) == 40 else None  # noqa: E731  tokens that are the labels
    out = DenseProbeEvaluator(onehot, {"toy": s})(None, None)
    assert out["toy/all/patch_acc@1/model"] == 1.0 and out["toy/all/miou/model"] == 1.0
    assert out["toy/all/patch_acc@1/chance"] == pytest.approx(np.bincount(labels.ravel()).max() / labels.size)
