"""RA-CLIP: retrieval against a brute-force NumPy search of the held-out reference set; the retrieval-augmented
module against a float64 transcription of its attention (and the identity at initialisation); the reference set
held out of training; and a run through train() whose evaluator embeds images with retrieval, recomputed in
float64."""
from __future__ import annotations

import json

import numpy as np
import pytest

from steps import family_objective, first_batch_and_params, unbox


def _np_pixels(images, side):
    """Area-averaged, mean-removed, unit-norm pixel rows in float64."""
    x = np.asarray(images, np.float64)
    b, s, _, c = x.shape
    k = s // side
    x = x.reshape(b, side, k, side, k, c).mean(axis=(2, 4)).reshape(b, -1)
    x = x - x.mean(axis=1, keepdims=True)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _np_retrieve(images, reference, side, k):
    """Indices [B, k] of the most correlated reference images, by a full sort."""
    sims = _np_pixels(images, side) @ np.asarray(reference["pixels"], np.float64).T
    return np.argsort(-sims, axis=1, kind="stable")[:, :k]


def _np_enrich(params, x, keys, values):
    """The module in float64: x + W_o · softmax(⟨W_q x, W_k key⟩ / √D) W_v value."""
    w = {n: np.asarray(params[f"retrieval_{n}"]["kernel"], np.float64) for n in ("query", "key", "value", "out")}
    q = np.asarray(x, np.float64) @ w["query"]
    kk = np.asarray(keys, np.float64) @ w["key"]
    vv = np.asarray(values, np.float64) @ w["value"]
    logits = np.einsum("bd,bkd->bk", q, kk) / np.sqrt(q.shape[1])
    a = np.exp(logits - logits.max(1, keepdims=True))
    a /= a.sum(1, keepdims=True)
    return np.asarray(x, np.float64) + np.einsum("bk,bkd->bd", a, vv) @ w["out"]


@pytest.fixture(scope="module")
def objective():
    return family_objective("raclip")


def test_retrieval_is_the_brute_force_top_k(objective):
    import jax

    obj = objective
    batch, _ = first_batch_and_params(obj)
    pixels, text = jax.jit(obj.retrieve)(batch["image"])
    want = _np_retrieve(batch["image"], obj.reference, obj.pixel_side, obj.top_k)
    np.testing.assert_array_equal(np.asarray(pixels), obj.reference["pixels"][want])
    np.testing.assert_array_equal(np.asarray(text), obj.reference["text"][want])
    np.testing.assert_allclose(np.linalg.norm(obj.reference["text"], axis=1), 1.0, rtol=1e-5)  # MiniLM, normalised
    # the reference set is the held-out style's seen concepts, and no training style
    assert obj.reference_style == "facebook" and "facebook" not in obj.data.train_styles
    assert len(obj.reference["names"]) == len(obj.reference["pixels"]) > 1000


def test_module_against_float64_and_identity_at_init(objective):
    import jax
    import jax.numpy as jnp

    obj = objective
    batch, params = first_batch_and_params(obj)
    model = obj.model()
    keys, values = obj.retrieve(batch["image"])
    plain = model.apply({"params": params}, batch["image"], None)[0][0]
    at_init = model.apply({"params": params}, batch["image"], None, retrieved=(keys, values))[0][0]
    np.testing.assert_array_equal(np.asarray(at_init), np.asarray(plain))  # W_o starts at zero
    rng = np.random.default_rng(0)
    params = dict(params, retrieval_out={"kernel": jnp.asarray(
        rng.normal(0, 0.3, np.shape(params["retrieval_out"]["kernel"])), jnp.float32)})
    z, aux = jax.jit(lambda p, x, kv: model.apply({"params": p}, x, None, retrieved=kv))(
        params, batch["image"], (keys, values))
    x = model.apply({"params": params}, batch["image"], None)[1]["img/unnormed"]
    want = _np_enrich(params, x, keys, values)
    np.testing.assert_allclose(np.asarray(aux["img/unnormed"]), want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(z[0]), want / np.linalg.norm(want, axis=1, keepdims=True), atol=1e-5)
    assert np.abs(want - np.asarray(x, np.float64)).max() > 1e-2  # the read-out moved the embedding


def test_reference_style_must_be_held_out(objective):
    from vlm_jax.config import apply_overrides, load_config
    from vlm_jax.train.trainer import Setup, finalize_config

    config = finalize_config(load_config("experiments/emoji_contrastive_family.py:method=raclip,size=test,steps=2,"
                                         "batch=16"))
    for bad, match in ((["loss.reference_style=twitter"], "training style"),
                       (["loss.reference_style=openmoji"], "reference style"), (["loss.pixel_side=5"], "pixel_side")):
        with pytest.raises(ValueError, match=match):
            Setup(apply_overrides(config, bad))


def test_raclip_through_train_evaluates_with_retrieval(tmp_path, objective):
    import jax

    from vlm_jax.config import apply_overrides, load_config
    from vlm_jax.train.trainer import finalize_config, train

    config = apply_overrides(finalize_config(load_config(
        "experiments/emoji_contrastive_family.py:method=raclip,size=test,steps=2,batch=16")),
        ["mesh=[('data', 1)]", "evals.sets=[]", "checkpoint.every_steps=2", "log_every=1"])
    out = train(config, tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len([r for r in rows if r.get("split") == "train"]) == 2
    params = unbox(jax.device_get(out["state"].params))
    assert np.abs(np.asarray(params["retrieval_out"]["kernel"])).max() > 0  # trained away from zero
    obj = objective
    images = np.asarray(first_batch_and_params(obj)[0]["image"])[:6]
    got = obj.embedder.images(params, images)  # what the zero-shot and retrieval evaluators embed
    idx = _np_retrieve(images, obj.reference, obj.pixel_side, obj.top_k)
    x = obj.model().apply({"params": params}, images, None)[1]["img/unnormed"]
    want = _np_enrich(params, x, obj.reference["pixels"][idx], obj.reference["text"][idx])
    np.testing.assert_allclose(got, want / np.linalg.norm(want, axis=1, keepdims=True), atol=2e-5)
