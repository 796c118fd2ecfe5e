"""Llip: the caption-conditioned pooling and its loss against float64 loops (weights sum to 1 and change with the
caption), GradCache with the mixture rows equal to the big batch, and a run through train() whose zero-shot scores
equal a float64 recomputation from the trained parameters (prompt ensembling included)."""
from __future__ import annotations

import numpy as np
import pytest

from steps import big_batch_and_gradcache, family_objective, first_batch_and_params
from vlm_jax.losses.llip import llip_loss, llip_similarity, mixture_weights


def _brute(keys, values, query, ztxt, tau):
    """(s [Bi, Bt], w [Bi, Bt, K]) by loops in float64: softmax over k of q_j·k_ik / τ, pooled values normalised,
    cosine with y_j."""
    keys, values, query, ztxt = (np.asarray(x, np.float64) for x in (keys, values, query, ztxt))
    bi, k, _ = keys.shape
    s, w = np.zeros((bi, len(query))), np.zeros((bi, len(query), k))
    for i in range(bi):
        for j in range(len(query)):
            a = np.array([query[j] @ keys[i, m] / tau for m in range(k)])
            e = np.exp(a - a.max())
            w[i, j] = e / e.sum()
            pooled = sum(w[i, j, m] * values[i, m] for m in range(k))
            s[i, j] = pooled @ ztxt[j] / np.linalg.norm(pooled)
    return s, w


def _inputs(seed: int, bi: int = 5, bt: int = 5, k: int = 4, d: int = 6):
    rng = np.random.default_rng(seed)
    ztxt = rng.normal(size=(bt, d))
    ztxt /= np.linalg.norm(ztxt, axis=1, keepdims=True)
    return [rng.normal(size=s).astype(np.float32) for s in ((bi, k, d), (bi, k, d), (bt, d))] + \
        [ztxt.astype(np.float32)]


def test_pooling_and_loss_against_float64_loops():
    keys, values, query, ztxt = _inputs(0)
    tau, t, b = 2.0, 7.0, -3.0
    s, w = _brute(keys, values, query, ztxt, tau)
    got_w = np.asarray(mixture_weights(keys, query, tau))
    np.testing.assert_allclose(got_w, w, atol=1e-6)
    np.testing.assert_allclose(got_w.sum(-1), 1.0, atol=1e-6)
    assert np.abs(w[:, 0] - w[:, 1]).max() > 1e-2  # one image, two captions: two different mixtures
    np.testing.assert_allclose(np.asarray(llip_similarity(keys, values, query, ztxt, tau)), s, atol=1e-5)
    logits = t * s
    sign = 2 * np.eye(len(s)) - 1
    sigmoid = np.sum(np.log1p(np.exp(-sign * (logits + b)))) / len(s)
    lse = lambda x, ax: np.log(np.exp(x).sum(ax))  # noqa: E731
    infonce = 0.5 * (np.mean(lse(logits, 1) - np.diag(logits)) + np.mean(lse(logits, 0) - np.diag(logits)))
    got, metrics = llip_loss(keys, values, query, ztxt, t, b, tau, "sigmoid")
    np.testing.assert_allclose(float(got), sigmoid, rtol=1e-5)
    pairs = w[np.arange(len(w)), np.arange(len(w))]  # each image pooled by its own caption
    entropy = -np.sum(pairs * np.log(pairs), axis=1) / np.log(pairs.shape[1])
    np.testing.assert_allclose(float(metrics["mixture_entropy"]), entropy.mean(), rtol=1e-5)
    got, _ = llip_loss(keys, values, query, ztxt, t, None, tau, "infonce")
    np.testing.assert_allclose(float(got), infonce, rtol=1e-5)


@pytest.fixture(scope="module")
def objective():
    return family_objective("llip")


def test_mixture_tokens_and_gradcache_equals_the_big_batch(objective):
    import jax
    import jax.numpy as jnp

    batch, params = first_batch_and_params(objective)
    k = int(objective.config.model.mixture_tokens)
    (zimg, _), aux = objective.model().apply({"params": params}, batch["image"], batch["text"])
    assert params["img"]["mixture"].shape[1] == k and aux["img/mixture_values"].shape[1] == k
    # the caption-free embedding is the values' uniform mixture
    mean = np.asarray(aux["img/mixture_values"], np.float64).mean(1)
    np.testing.assert_allclose(zimg, mean / np.linalg.norm(mean, axis=1, keepdims=True), atol=1e-5)
    _, metrics, g_big = big_batch_and_gradcache(objective, params, {}, batch, jax.random.key(2))
    assert 0.0 < float(metrics["mixture_entropy"]) <= 1.0
    for name in ("mixture_key", "mixture_value", "mixture_query"):  # the pooling's maps all learn
        assert float(jnp.abs(g_big[name]["kernel"]).max()) > 0
    assert float(jnp.abs(g_big["img"]["mixture"]).max()) > 0


def test_llip_through_train_scores_like_float64(tmp_path):
    from vlm_jax.config import apply_overrides, load_config
    from vlm_jax.evals.embedder import MixtureEmbedder
    from vlm_jax.train.trainer import Setup, finalize_config, train

    config = apply_overrides(finalize_config(load_config(
        "experiments/emoji_contrastive_family.py:method=llip,size=test,steps=3,batch=16")),
        ["mesh=[('data', 1)]", "evals.sets=['emoji']", "checkpoint.every_steps=3"])
    out = train(config, tmp_path / "run")
    assert 0.0 <= out["evals"]["zeroshot/emoji/cross/all/top@1/model"] <= 1.0
    objective = out["setup"].objective
    zeroshot = objective.evaluators()["zeroshot"]
    assert isinstance(zeroshot.embedder, MixtureEmbedder)
    import jax

    params = jax.device_get(out["state"].params)
    cross = zeroshot.sets["emoji/cross"]
    names = cross.class_names[:30]
    model = objective.model()
    _, aux = model.apply({"params": params}, cross.images[:10], None)
    # classes by hand: each template's unit text embedding, averaged, renormalised, and its query
    per_template = [np.asarray(model.apply({"params": params}, None, objective.data.tokenize(
        [t.format(n) for n in names]))[0][1], np.float64) for t in zeroshot.templates]
    z = np.mean(per_template, axis=0)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    query = z @ np.asarray(params["mixture_query"]["kernel"], np.float64)
    want, _ = _brute(aux["img/mixture_keys"], aux["img/mixture_values"], query, z, objective.tau)
    got, _ = zeroshot.embedder.similarity(zeroshot.embedder.images(params, cross.images[:10]),
                                          zeroshot.class_embeddings(params, names))
    np.testing.assert_allclose(got, want, atol=1e-5)
    with pytest.raises(ValueError, match="standard suite"):
        Setup(apply_overrides(config, ["evals.suite=['cifar10']"]))
