"""Image-only evaluation of a frozen encoder's features: a closed-form ridge linear probe and a weighted kNN."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from vlm_jax.evals.metrics import l2_normalize, pixel_features

L2_GRID = tuple(10.0 ** k for k in range(-3, 5))  # ridge strengths tried, chosen by leave-one-out accuracy
# evals keys of every objective with probes: probe_sets (the dataset's `probe_sets` names; [] none), the kNN vote
# dense_sets: the dataset's `dense_sets` (per-patch linear probes on composed scenes; [] none)
PROBE_DEFAULTS = dict(probe_sets=[], knn_k=10, knn_temperature=0.07, dense_sets=[])


@dataclass
class ProbeSet:
    """Labelled training images for fitting and held-out test images for scoring."""

    train_images: np.ndarray  # float32 [N, H, W, 3] in [-1, 1]
    train_labels: np.ndarray  # int [N]
    test_images: np.ndarray
    test_labels: np.ndarray
    num_classes: int
    pixel_train: np.ndarray | None = None  # the same images at the pixel baseline's size (None: no baseline)
    pixel_test: np.ndarray | None = None


def standardize(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both feature sets centred and scaled by the training set's per-dimension mean and std (float64)."""
    train, test = np.asarray(train, np.float64), np.asarray(test, np.float64)
    mean, std = train.mean(0), train.std(0) + 1e-6
    return (train - mean) / std, (test - mean) / std


def _design(x: np.ndarray) -> np.ndarray:
    """Features with a trailing column of ones (the bias)."""
    return np.concatenate([x, np.ones((len(x), 1))], axis=1)


def ridge_fit(x: np.ndarray, y: np.ndarray, num_classes: int, l2: float) -> np.ndarray:
    """[F+1, C] weights (bias last, not penalised) regressing one-hot targets on standardised features."""
    a = _design(x)
    reg = l2 * np.eye(a.shape[1])
    reg[-1, -1] = 0.0
    return np.linalg.solve(a.T @ a + reg, a.T @ np.eye(num_classes)[y])


def ridge_loo_accuracy(x: np.ndarray, y: np.ndarray, num_classes: int, l2: float) -> float:
    """Leave-one-out accuracy of `ridge_fit`, exactly, without refitting: ŷ₋ᵢ = (ŷᵢ − hᵢᵢ·yᵢ) / (1 − hᵢᵢ)."""
    a = _design(x)
    reg = l2 * np.eye(a.shape[1])
    reg[-1, -1] = 0.0
    inv_at = np.linalg.solve(a.T @ a + reg, a.T)  # [F+1, N]
    onehot = np.eye(num_classes)[y]
    fitted = a @ (inv_at @ onehot)
    h = np.einsum("nf,fn->n", a, inv_at)[:, None]
    loo = (fitted - h * onehot) / np.maximum(1.0 - h, 1e-12)
    return float(np.mean(np.argmax(loo, axis=1) == y))


def ridge_predict(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, num_classes: int,
                  l2_grid: Sequence[float] = L2_GRID) -> tuple[np.ndarray, float, float]:
    """(test predictions, chosen strength, its leave-one-out accuracy) of the ridge probe whose strength maximises
    leave-one-out accuracy on the training set."""
    tr, te = standardize(train_x, test_x)
    scores = [ridge_loo_accuracy(tr, train_y, num_classes, l2) for l2 in l2_grid]
    best = float(l2_grid[int(np.argmax(scores))])
    w = ridge_fit(tr, train_y, num_classes, best)
    return np.argmax(_design(te) @ w, axis=1), best, float(max(scores))


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                 num_classes: int, l2_grid: Sequence[float] = L2_GRID) -> dict[str, float]:
    """Test accuracy of `ridge_predict`, with its chosen strength and leave-one-out accuracy."""
    pred, best, loo = ridge_predict(train_x, train_y, test_x, num_classes, l2_grid)
    return {"linear": float(np.mean(pred == test_y)), "linear_l2": best, "linear_loo": loo}


def knn_predict(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, num_classes: int, k: int = 10,
                temperature: float = 0.07) -> np.ndarray:
    """Labels by a vote of the k most cosine-similar training examples, each weighted exp(sim / temperature)."""
    tr, te = l2_normalize(np.asarray(train_x, np.float32)), l2_normalize(np.asarray(test_x, np.float32))
    k = min(k, len(tr))
    out = np.empty(len(te), np.int64)
    for start in range(0, len(te), 1024):
        sims = te[start:start + 1024] @ tr.T
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        weights = np.exp(np.take_along_axis(sims, top, axis=1) / temperature)
        votes = np.zeros((len(sims), num_classes))
        np.add.at(votes, (np.arange(len(sims))[:, None], train_y[top]), weights)
        out[start:start + len(sims)] = np.argmax(votes, axis=1)
    return out


def probe_scores(train_x: np.ndarray, test_x: np.ndarray, s: ProbeSet, k: int, temperature: float,
                 l2_grid: Sequence[float]) -> dict[str, float]:
    """Linear-probe ("linear", its chosen l2 and leave-one-out accuracy) and kNN accuracy of features on `s`."""
    res = linear_probe(train_x, s.train_labels, test_x, s.test_labels, s.num_classes, l2_grid)
    res["knn"] = float(np.mean(knn_predict(train_x, s.train_labels, test_x, s.num_classes, k, temperature)
                               == s.test_labels))
    return res


class ProbeEvaluator:
    """Linear-probe and kNN top-1 of `features(params, images)` on each set, beside the same probes on raw pixels
    and the majority-class rate (keys "<set>/all/{linear,knn}@1/{model,pixel,chance}")."""

    def __init__(self, features: Callable[[Any, np.ndarray], np.ndarray], sets: dict[str, ProbeSet], k: int = 10,
                 temperature: float = 0.07, l2_grid: Sequence[float] = L2_GRID):
        self.features, self.sets = features, sets
        self.k, self.temperature, self.l2_grid = k, temperature, tuple(l2_grid)
        self._pixel: dict[str, dict[str, float]] = {}

    def pixel_baseline(self, name: str) -> dict[str, float]:
        """The probes on standardised raw pixels (computed once per set; empty without pixel images)."""
        s = self.sets[name]
        if name not in self._pixel:
            self._pixel[name] = {} if s.pixel_train is None else probe_scores(
                pixel_features(s.pixel_train), pixel_features(s.pixel_test), s, self.k, self.temperature,
                self.l2_grid)
        return self._pixel[name]

    def __call__(self, params: Any, extra: Any) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, s in self.sets.items():
            res = probe_scores(self.features(params, s.train_images), self.features(params, s.test_images), s,
                               self.k, self.temperature, self.l2_grid)
            pixel = self.pixel_baseline(name)
            chance = float(np.max(np.bincount(s.test_labels, minlength=s.num_classes)) / len(s.test_labels))
            for probe in ("linear", "knn"):
                out[f"{name}/all/{probe}@1/model"] = res[probe]
                out[f"{name}/all/{probe}@1/chance"] = chance
                if pixel:
                    out[f"{name}/all/{probe}@1/pixel"] = pixel[probe]
            out[f"{name}/linear_l2"], out[f"{name}/linear_loo"] = res["linear_l2"], res["linear_loo"]
        return out


def probe_evaluator(data: Any, features: Callable[[Any, np.ndarray], np.ndarray], evals: Any,
                    tokens: Callable[[Any, np.ndarray], np.ndarray] | None = None) -> dict[str, Any]:
    """{"probe": ProbeEvaluator} over `evals["probe_sets"]` of `data`, and {"dense": DenseProbeEvaluator} over
    `evals["dense_sets"]` when `tokens` (patch features) is given; empty when none are named."""
    from vlm_jax.evals.dense import DenseProbeEvaluator

    out: dict[str, Any] = {}
    sets = list(evals.get("probe_sets", []) or [])
    if sets:
        out["probe"] = ProbeEvaluator(features, data.probe_sets(sets), k=int(evals.get("knn_k", 10)),
                                      temperature=float(evals.get("knn_temperature", 0.07)))
    dense = list(evals.get("dense_sets", []) or [])
    if dense:
        if tokens is None:
            raise ValueError("evals.dense_sets needs an objective whose image tower gives patch tokens")
        out["dense"] = DenseProbeEvaluator(tokens, data.dense_sets(dense))
    return out
