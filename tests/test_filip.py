"""FILIP as an objective: the evaluators' token-wise similarity against brute-force float64 loops, GradCache with
token rows (their gradients go through the widened seam) equal to the big batch, and a run through train()."""
from __future__ import annotations

import numpy as np
import pytest

from steps import big_batch_and_gradcache, family_objective, first_batch_and_params
from vlm_jax.config import apply_overrides, load_config


def _brute(images: np.ndarray, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """s^I and s^T by loops: for image i and class c, the mean over i's real tokens of the best real token of c
    (and the reverse), averaged over the templates (axis 0 of `classes`); zero vectors are padding."""
    q, c = len(images), classes.shape[1]
    s_i, s_t = np.zeros((q, c)), np.zeros((q, c))
    for template in classes:
        for i in range(q):
            xi = [x for x in images[i].astype(np.float64) if np.any(x)]
            for j in range(c):
                yj = [y for y in template[j].astype(np.float64) if np.any(y)]
                s_i[i, j] += np.mean([max(x @ y for y in yj) for x in xi]) / len(classes)
                s_t[i, j] += np.mean([max(x @ y for x in xi) for y in yj]) / len(classes)
    return s_i, s_t


def _tokens(rng: np.random.Generator, n: int, length: int, d: int, pad: bool) -> np.ndarray:
    x = rng.normal(size=(n, length, d))
    x /= np.linalg.norm(x, axis=-1, keepdims=True)
    if pad:
        for i in range(n):
            x[i, rng.integers(1, length + 1):] = 0.0  # at least one real token
    return x.astype(np.float32)


def test_late_interaction_similarity_against_loops():
    from vlm_jax.evals.embedder import LateInteractionEmbedder

    rng = np.random.default_rng(0)
    images = _tokens(rng, 7, 5, 4, pad=True)
    classes = np.stack([_tokens(rng, 6, 3, 4, pad=True) for _ in range(2)])  # two templates
    embedder = LateInteractionEmbedder(None, None, None, chunk=3)  # blocks of 3 queries: the last one short
    got = embedder.similarity(images, classes)
    for g, w in zip(got, _brute(images, classes)):
        np.testing.assert_allclose(g, w, atol=1e-5)


@pytest.fixture(scope="module")
def objective():
    return family_objective("filip")


def test_gradcache_with_token_rows_equals_the_big_batch(objective):
    import jax
    import jax.numpy as jnp

    batch, params = first_batch_and_params(objective)
    _, _, g_big = big_batch_and_gradcache(objective, params, {}, batch, jax.random.key(2))
    # the loss reads only the token embeddings: their heads get gradients, the pooled projection none
    assert float(jnp.abs(g_big["img_token_head"]["kernel"]).max()) > 0
    assert float(jnp.abs(g_big["txt"]["head"]["kernel"]).max()) == 0.0


def test_filip_through_train(tmp_path):
    from vlm_jax.evals.embedder import LateInteractionEmbedder
    from vlm_jax.train.trainer import finalize_config, train

    config = apply_overrides(finalize_config(load_config(
        "experiments/emoji_contrastive_family.py:method=filip,size=test,steps=3,batch=16")),
        ["mesh=[('data', 1)]", "evals.sets=['emoji']", "checkpoint.every_steps=3"])
    out = train(config, tmp_path / "run")
    ev = out["evals"]
    assert 0.0 <= ev["zeroshot/emoji/cross/all/top@1/model"] <= 1.0
    zeroshot = out["setup"].objective.evaluators()["zeroshot"]
    assert isinstance(zeroshot.embedder, LateInteractionEmbedder)
    # the evaluator's top-1 is the brute-force token-wise top-1 over the same class token sets (first 12 queries)
    cross = zeroshot.sets["emoji/cross"]
    params = out["state"].params
    img = zeroshot.embedder.images(params, cross.images[:12])
    cls = zeroshot.class_embeddings(params, cross.class_names)
    s_i, _ = _brute(img, cls[:, :40])  # 40 classes keep the loops short
    got, _ = zeroshot.embedder.similarity(img, cls[:, :40])
    np.testing.assert_allclose(got, s_i, atol=1e-5)
    with pytest.raises(ValueError, match="token by token"):
        from vlm_jax.train.trainer import Setup

        Setup(apply_overrides(config, ["evals.probe_sets=['emoji']"]))
