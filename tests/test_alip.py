"""ALIP: the gates against a float64 transcription of the released training loop (the sample weight in [0, 1]),
the objective's loss against float64 per-pair cross-entropies, the second captions (clean under caption noise, the
rest of the stream unchanged), and a run through train() whose state keeps the logged running means."""
from __future__ import annotations

import json

import ml_collections
import numpy as np
import pytest

from steps import family_objective, first_batch_and_params


def _np_gates(ztxt, zcap, zimg, means):
    """The reference loop's arithmetic in float64, step by step."""
    zt, zc, zi = (np.asarray(x, np.float64) for x in (ztxt, zcap, zimg))
    cur = {"text_caption": np.sum(zt * zc, 1), "text_image": np.sum(zt * zi, 1), "caption_image": np.sum(zc * zi, 1)}
    new = {k: v.mean() * 0.01 + float(means[k]) * 0.99 for k, v in cur.items()}
    sample_raw = np.exp(cur["text_caption"] - new["text_caption"]) ** 2
    sample = np.where(sample_raw < 1, sample_raw, 1.0)
    raw = np.where(sample_raw < 1, np.exp(cur["text_image"] - new["text_image"]) ** 2, 1.0)
    cap = np.where(sample_raw < 1, np.exp(cur["caption_image"] - new["caption_image"]) ** 2, 1.0)
    return {"sample": sample, "raw": raw, "caption": cap}, new


def _unit(rng, n, d):
    x = rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_gates_against_the_reference_loop():
    from vlm_jax.losses.alip import alip_gates

    rng = np.random.default_rng(0)
    for means in ({"text_caption": 1.0, "text_image": 1.0, "caption_image": 1.0},
                  {"text_caption": 0.1, "text_image": -0.2, "caption_image": 0.05}):
        zt, zc, zi = (_unit(rng, 32, 8) for _ in range(3))
        got, new = alip_gates(zt, zc, zi, {k: np.float32(v) for k, v in means.items()})
        want, want_new = _np_gates(zt, zc, zi, means)
        for k in want:
            np.testing.assert_allclose(np.asarray(got[k]), want[k], rtol=1e-5)
        for k in want_new:
            np.testing.assert_allclose(float(new[k]), want_new[k], rtol=1e-6)
        assert np.all((np.asarray(got["sample"]) >= 0) & (np.asarray(got["sample"]) <= 1))
    assert np.any(want["sample"] < 1) and np.any(want["sample"] == 1)  # both sides of the cap were exercised


@pytest.fixture(scope="module")
def objective():
    return family_objective("alip")


def test_loss_against_float64(objective):
    import jax
    import jax.numpy as jnp

    obj = objective
    batch, params = first_batch_and_params(obj, keys=("image", "text", "caption"))
    extra = {"text_caption": jnp.float32(0.3), "text_image": jnp.float32(0.0), "caption_image": jnp.float32(0.1)}
    loss, (metrics, new) = jax.jit(lambda p, e: obj.loss(p, e, batch, jax.random.key(1)))(params, extra)
    model = obj.model()
    (zimg, ztxt), aux = model.apply({"params": params}, batch["image"], batch["text"])
    (_, zcap), _ = model.apply({"params": params}, None, batch["caption"])
    w, means = _np_gates(ztxt, zcap, zimg, {k: float(v) for k, v in extra.items()})
    t = float(aux["t"])

    def per_pair(a, b):
        logits = t * np.asarray(a, np.float64) @ np.asarray(b, np.float64).T
        lse = lambda x, ax: np.log(np.exp(x - x.max()).sum(ax)) + x.max()  # noqa: E731
        return 0.5 * ((lse(logits, 1) - np.diag(logits)) + (lse(logits, 0) - np.diag(logits)))

    want = np.mean(per_pair(zimg, ztxt) * w["raw"] * w["sample"]) + \
        np.mean(per_pair(zimg, zcap) * w["caption"] * w["sample"])
    np.testing.assert_allclose(float(loss), want, rtol=1e-4)
    for k, v in means.items():
        np.testing.assert_allclose(float(new[k]), v, rtol=1e-5)


def test_second_captions_are_clean_names_and_leave_the_stream_unchanged(data_dir):
    from vlm_jax.data import emoji_tfds, image_text
    from vlm_jax.data.rewrites import rewrites_of
    from vlm_jax.data.tokenizer import TRAIN_TEMPLATES

    def stream(**kw):
        cfg = ml_collections.ConfigDict(dict(name="emoji", data_dir=data_dir, num_threads=0, caption_noise=0.5,
                                             train_styles=("noto", "twitter"), **kw))
        data = image_text.get(cfg)
        return data, data.train(128, 4, 0, 1)

    data, plain = stream()
    _, alt = stream(alt_captions=True)
    split = emoji_tfds.load_split(data_dir, "train", 64)
    names = dict(zip(split["concept"].tolist(), split["name"]))
    emojis = dict(zip(split["concept"].tolist(), split["emoji"]))
    rewritten = 0
    for _, a, b in zip(range(2), plain, alt):
        for key in ("image", "text", "concept"):
            np.testing.assert_array_equal(a[key], b[key])  # the second caption is drawn after everything else
        for concept, tokens in zip(b["concept"], b["caption"]):
            own = names[int(concept)]
            pool = rewrites_of(emojis[int(concept)], own) or [own]
            options = {tuple(row.tolist()) for row in data.tokenize([t.format(n) for t in TRAIN_TEMPLATES
                                                                      for n in pool])}
            assert tuple(tokens.tolist()) in options  # a clean caption of the image's own concept
            rewritten += pool != [own]
    assert rewritten > 0
    with pytest.raises(ValueError, match="alt_captions"):
        stream(alt_captions=True, languages=("en", "ko"))


def test_alip_through_train_keeps_the_running_means(tmp_path):
    from vlm_jax.config import apply_overrides, load_config
    from vlm_jax.train.trainer import finalize_config, train

    config = apply_overrides(finalize_config(load_config(
        "experiments/emoji_contrastive_family.py:method=alip,noise=0.5,size=test,steps=3,batch=16")),
        ["mesh=[('data', 1)]", "evals.sets=[]", "checkpoint.every_steps=3", "log_every=1"])
    out = train(config, tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r.get("split") == "train"]
    assert len(steps) == 3 and all(0.0 <= r["sample_weight_mean"] <= 1.0 for r in steps)
    extra = out["state"].extra
    for k in ("text_caption", "text_image", "caption_image"):
        assert float(extra[k]) == pytest.approx(steps[-1][f"mean_{k}"], rel=1e-5)
        assert steps[0][f"mean_{k}"] != steps[-1][f"mean_{k}"]
