"""Ranking metrics, pixel baseline and the results table against brute-force answers."""
import numpy as np
import pytest

from vlm_jax.evals.metrics import chance_topk, pixel_features, topk_hits
from vlm_jax.evals.report import format_results, rows
from vlm_jax.evals.zeroshot import EvalSet, evaluate_set


def _brute_rank(scores, labels):
    """Rank of the true label counting every other class scoring >= it (pessimistic ties)."""
    return np.array([sum(1 for j in range(scores.shape[1]) if j != l and s[j] >= s[l])
                     for s, l in zip(scores, labels)])


def test_topk_hits_matches_brute_force_with_ties():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, size=(200, 7)).astype(float)  # many ties
    labels = rng.integers(0, 7, size=200)
    hits = topk_hits(scores, labels, (1, 3))
    ranks = _brute_rank(scores, labels)
    np.testing.assert_array_equal(hits[1], ranks < 1)
    np.testing.assert_array_equal(hits[3], ranks < 3)


def test_pixel_features_are_correlations():
    rng = np.random.default_rng(1)
    a, b = rng.uniform(size=(2, 5, 4, 4, 3))
    fa, fb = pixel_features(a), pixel_features(b)
    want = [np.corrcoef(x.ravel(), y.ravel())[0, 1] for x, y in zip(a, b)]
    np.testing.assert_allclose(np.sum(fa * fb, axis=1), want, rtol=1e-5)


def test_evaluate_set_known_answers():
    """3 classes; queries 0 and 1 sit on their class, query 2 halfway between classes 0 and 2."""
    cls = np.eye(3, dtype=np.float32)
    q2 = np.array([1, 0, 1], np.float32) / np.sqrt(2)
    img = np.stack([cls[0], cls[1], q2])
    labels = np.array([0, 1, 2])
    ev = EvalSet(images=np.zeros((3, 2, 2, 3)), labels=labels, class_names=["a", "b", "c"],
                 class_images=np.zeros((3, 2, 2, 3)), subsets={"odd": np.array([False, False, True])})
    scores = img @ cls.T  # the model's cosines, both directions
    out = evaluate_set(ev, (scores, scores), img, np.stack([cls, np.stack([cls[0], cls[1], q2])]), ks=(1, 2))
    assert out["all/top@1/model"] == pytest.approx(2 / 3)  # query 2 ties classes 0 and 2: ties count against
    assert out["odd/top@1/model"] == 0.0 and out["odd/top@2/model"] == 1.0
    assert out["all/i2t_R@1/model"] == pytest.approx(2 / 3) and out["all/t2i_R@1/model"] == 1.0
    assert out["all/top@1/pixel"] == 1.0  # the second reference style draws class c exactly like query 2
    assert out["all/top@1/chance"] == pytest.approx(chance_topk(3, 1)) and out["num_classes"] == 3


def test_report_rows_and_table():
    res = {"zeroshot/emoji/cross/all/top@1/model": 0.5, "zeroshot/emoji/cross/all/top@1/pixel": 0.25,
           "zeroshot/emoji/cross/all/top@1/chance": 0.001, "zeroshot/emoji/cross/num_queries": 10.0}
    (r,) = rows(res)
    assert r[:3] == ("zeroshot/emoji/cross", "all", "top@1") and r[3]["pixel"] == 0.25
    assert "| zeroshot/emoji/cross | all | top@1 | 50.0 | 25.0 | 0.1 |" in format_results(res)


def test_compare_runs_side_by_side():
    from vlm_jax.evals.report import compare

    a = {"zeroshot/emoji/cross/nonflag/top@1/model": 0.2, "zeroshot/emoji/cross/nonflag/top@1/pixel": 0.25,
         "zeroshot/emoji/cross/nonflag/top@1/chance": 0.001, "zeroshot/emoji/cross/all/top@1/model": 0.3}
    b = {"zeroshot/emoji/cross/nonflag/top@1/model": 0.3}
    table = compare({"clip": a, "siglip": b})
    assert "| emoji/cross | nonflag | top@1 | 20.0 | 30.0 | 25.0 | 0.1 |" in table
    assert "| all |" not in table  # emoji rows are shown per flag / non-flag subset
