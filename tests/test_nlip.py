"""NLIP: the mixture's noise probabilities against a float64 NumPy EM, the weighted InfoNCE against float64, the
data's example ids against the source rows, and a run through train() whose per-pair history covers exactly the
pairs the stream delivered."""
from __future__ import annotations

import json

import ml_collections
import numpy as np
import pytest

from vlm_jax.losses.nlip import gmm_noise_probability, weighted_infonce


def _np_gmm(x: np.ndarray, valid: np.ndarray, iterations: int) -> np.ndarray:
    """Two-component 1-D EM in float64 from mean ∓ std, equal weights; posterior of the higher-mean component."""
    v = x[valid].astype(np.float64)
    mean, std = v.mean(), v.std() + 1e-6
    mu, var, pi = np.array([mean - std, mean + std]), np.array([std ** 2] * 2), np.array([0.5, 0.5])

    def resp(z):
        p = pi * np.exp(-0.5 * (z[:, None] - mu) ** 2 / var) / np.sqrt(2 * np.pi * var)
        return p / p.sum(1, keepdims=True)

    for _ in range(iterations):
        r = resp(v)
        nk = r.sum(0) + 1e-8
        mu = (r * v[:, None]).sum(0) / nk
        var = (r * (v[:, None] - mu) ** 2).sum(0) / nk + 1e-6
        pi = nk / nk.sum()
    out = np.zeros(len(x))
    out[valid] = resp(v)[:, np.argmax(mu)]
    return out


def test_noise_probability_against_numpy_em():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(1.0, 0.2, 300), rng.normal(3.0, 0.5, 100), rng.normal(0, 1, 50)])
    valid = np.arange(len(x)) < 400  # the last 50 were never visited
    got = np.asarray(gmm_noise_probability(x.astype(np.float32), valid, 10), np.float64)
    np.testing.assert_allclose(got, _np_gmm(x, valid, 10), atol=1e-4)
    assert got.min() >= 0.0 and got.max() <= 1.0 and np.all(got[400:] == 0.0)
    assert np.mean(got[300:400] > 0.5) > 0.9 and np.mean(got[:300] < 0.5) > 0.9  # high losses are the noisy ones


def test_weighted_infonce_against_float64():
    rng = np.random.default_rng(1)
    b, t = 6, 4.0
    zi, zt = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in rng.normal(size=(2, b, 5)))
    w = rng.uniform(size=b)
    logits = t * zi @ zt.T
    lse = lambda z, a: np.log(np.exp(z - z.max(a, keepdims=True)).sum(a)) + z.max(a)  # noqa: E731
    per_pair = 0.5 * ((lse(logits, 1) - np.diag(logits)) + (lse(logits, 0) - np.diag(logits)))
    loss, got_pairs, _ = weighted_infonce(zi.astype(np.float32), zt.astype(np.float32), np.float32(t),
                                          w.astype(np.float32))
    np.testing.assert_allclose(np.asarray(got_pairs), per_pair, rtol=1e-5)
    np.testing.assert_allclose(float(loss), np.sum(w * per_pair) / np.sum(w), rtol=1e-5)


def test_example_ids_name_the_source_rows(data_dir):
    from vlm_jax.data import image_text, pipeline

    cfg = ml_collections.ConfigDict(dict(name="emoji", data_dir=data_dir, num_threads=0, example_ids=True,
                                         train_styles=("noto", "twitter")))
    data = image_text.get(cfg)
    src = pipeline.train_source(data_dir, ("noto", "twitter"), 64)
    assert data.num_train_examples() == len(src)
    batch = next(iter(data.train(64, 0, 0, 1)))
    for i, concept in zip(batch["example"], batch["concept"]):
        assert int(src[int(i)]["concept"]) == int(concept)
    with pytest.raises(ValueError, match="example ids need data.sampling"):
        image_text.get(ml_collections.ConfigDict(dict(cfg.to_dict(), sampling="concepts"))).train(64, 0, 0, 1)


def test_nlip_through_train(tmp_path):
    from vlm_jax.config import apply_overrides, load_config
    from vlm_jax.train.trainer import finalize_config, train

    config = apply_overrides(finalize_config(load_config(
        "experiments/emoji_contrastive_family.py:method=nlip,size=test,steps=3,batch=16")),
        ["mesh=[('data', 1)]", "evals.sets=[]", "checkpoint.every_steps=3", "loss.warmup=0.0"])
    out = train(config, tmp_path / "run")
    extra = out["state"].extra
    stream = out["setup"].objective.train_data(16, config.seed, 0, 1)
    visited = {int(i) for _, b in zip(range(3), stream) for i in b["example"]}
    assert set(np.flatnonzero(np.asarray(extra["seen"])).tolist()) == visited
    assert np.all(np.asarray(extra["history"])[sorted(visited)] > 0)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r.get("split") == "train"]
    assert steps[0]["history_seen"] == 0.0 and steps[0]["weight_mean"] == 1.0  # nothing seen: no pair down-weighted
    assert all(0.0 <= r["noise_probability_mean"] <= 1.0 and 0.0 <= r["weight_mean"] <= 1.0 for r in steps)
    assert steps[-1]["history_seen"] == pytest.approx(len({int(i) for _, b in zip(range(2), out["setup"].objective
                                                            .train_data(16, config.seed, 0, 1)) for i in b["example"]})
                                                       / out["setup"].objective.num_examples)
