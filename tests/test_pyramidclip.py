"""PyramidCLIP: the softened InfoNCE against float64 loops over explicit soft targets; the object boxes' patches by
brute force over every place; joined tags against list splicing; the objects' embedding sees only the pixels in
the two boxes; the objective's loss against a float64 recomputation of the paper's weighted sum; the name texts of
the data stream; and a run through train() whose logged loss is the weighted sum of its logged terms."""
from __future__ import annotations

import json

import ml_collections
import numpy as np
import pytest

from steps import family_objective, first_batch_and_params


def _np_soft_infonce(logits, alpha):
    """Symmetric cross-entropy with (1 − α) on the pair and α / (N − 1) on each other sample, by loops in float64."""
    x = np.asarray(logits, np.float64)
    n = len(x)
    total = 0.0
    for m in (x, x.T):
        for i in range(n):
            lse = np.log(np.sum(np.exp(m[i] - m[i].max()))) + m[i].max()
            for j in range(n):
                target = 1 - alpha if i == j else alpha / (n - 1)
                total -= target * (m[i, j] - lse)
    return total / (2 * n)


def test_softened_infonce_against_explicit_targets():
    from vlm_jax.losses.contrastive import infonce_loss
    from vlm_jax.losses.pyramidclip import softened_infonce

    rng = np.random.default_rng(0)
    zi, zt = (rng.normal(size=(12, 8)) for _ in range(2))
    zi, zt = (np.float32(z / np.linalg.norm(z, axis=1, keepdims=True)) for z in (zi, zt))
    for alpha in (0.0, 0.2, 0.5):
        got, _ = softened_infonce(zi, zt, np.float32(7.0), alpha)
        np.testing.assert_allclose(float(got), _np_soft_infonce(7.0 * zi.astype(np.float64) @ zt.T, alpha), rtol=1e-5)
    plain, _ = infonce_loss(zi, zt, np.float32(7.0))
    np.testing.assert_allclose(float(softened_infonce(zi, zt, np.float32(7.0), 0.0)[0]), float(plain), rtol=1e-6)


def test_box_patches_are_the_patches_whose_centres_lie_in_the_box():
    from vlm_jax.data.scenes import box_patches

    for size, side, patch in ((32, 16, 8), (32, 8, 8), (48, 24, 8), (32, 32, 16)):
        grid = size // patch
        places = np.array([(top, left) for top in range(size - side + 1) for left in range(size - side + 1)])
        got = np.asarray(box_patches(np.asarray(places, np.int32), side, patch, grid))
        for (top, left), row in zip(places, got):
            want = [r * grid + c for r in range(grid) for c in range(grid)
                    if top <= (r + 0.5) * patch < top + side and left <= (c + 0.5) * patch < left + side]
            assert sorted(row.tolist()) == want


def test_joined_tags_splice_the_words():
    from vlm_jax.losses.pyramidclip import join_tags

    pad, eos, length = 0, 2, 8
    rng = np.random.default_rng(1)

    def row(n):
        words = rng.integers(3, 50, n).tolist()
        return (words + [eos] + [pad] * length)[:length], words

    for n1, n2 in ((2, 3), (0, 4), (5, 5), (7, 1), (8, 2), (3, 0)):
        (a, wa), (b, wb) = row(n1), row(n2)
        got = np.asarray(join_tags(np.array([a]), np.array([b]), pad, eos))[0].tolist()
        want = ((wa + wb)[:length] + [eos] + [pad] * length)[:length] if n1 < length else a
        assert got == want, (n1, n2)


@pytest.fixture(scope="module")
def objective():
    return family_objective("pyramidclip")


def test_objects_embedding_sees_only_the_boxes(objective):
    import jax
    import jax.numpy as jnp

    obj = objective
    batch, params = first_batch_and_params(obj, keys=("image", "text", "summary", "tags"))
    p = obj.pyramid(jax.random.key(3), batch)
    scenes, keep = np.asarray(p["scenes"]), np.asarray(p["keep"])
    size, patch = scenes.shape[1], obj.patch
    grid = size // patch
    inside = np.zeros((len(scenes), size, size), bool)
    for i, idx in enumerate(keep):
        for k in idx:
            r, c = divmod(int(k), grid)
            inside[i, r * patch:(r + 1) * patch, c * patch:(c + 1) * patch] = True
    assert np.all(inside.reshape(len(scenes), -1).sum(1) <= 2 * obj.object_side ** 2)  # two boxes' worth at most
    model = obj.model()
    embed = jax.jit(lambda x: model.apply({"params": params}, x, None, keep=jnp.asarray(keep))[0][0])
    noise = np.random.default_rng(0).uniform(-1, 1, scenes.shape).astype(np.float32)
    outside_changed = np.where(inside[..., None], scenes, noise)
    inside_changed = np.where(inside[..., None], noise, scenes)
    base = np.asarray(embed(scenes))
    np.testing.assert_allclose(np.asarray(embed(outside_changed)), base, atol=1e-6)
    assert np.abs(np.asarray(embed(inside_changed)) - base).max() > 1e-3


def test_loss_is_the_papers_weighted_sum_in_float64(objective):
    import jax
    import jax.numpy as jnp

    obj = objective
    batch, params = first_batch_and_params(obj, keys=("image", "text", "summary", "tags"))
    rng = jax.random.key(5)
    loss, (metrics, _) = jax.jit(lambda prm: obj.loss(prm, {}, batch, rng))(params)
    k_views, _, _ = jax.random.split(rng, 3)
    p = obj.pyramid(k_views, batch)
    model = obj.model()

    def z(image=None, text=None, keep=None):
        (zi, zt), aux = model.apply({"params": params}, image, text, keep=keep)
        return np.asarray(zi if image is not None else zt, np.float64), float(aux["t"])

    (g, t), (loc, _) = z(batch["image"]), z(p["local"])
    obj_z, _ = z(p["scenes"], keep=p["keep"])
    cap, summ, tags = z(text=batch["text"])[0], z(text=p["summary"])[0], z(text=p["tags"])[0]
    term = {name: _np_soft_infonce(t * a @ b.T, 0.2) for name, (a, b) in dict(
        GS=(g, summ), LT=(loc, cap), GA=(g, tags), RS=(obj_z, summ), LA=(loc, tags), RT=(obj_z, cap)).items()}
    lam = mu = 1 / 3
    want = (1 - lam - mu) * (term["GS"] + term["LT"]) / 2 + lam * (term["GA"] + term["RS"]) / 2 + \
        mu * (term["LA"] + term["RT"]) / 2
    np.testing.assert_allclose(float(loss), want, rtol=2e-4)
    np.testing.assert_allclose(float(metrics["objects_caption_loss"]), term["RT"], rtol=2e-4)
    # the tags name the scene's two objects: the image's own name, then its partner's
    assert np.all(np.asarray(p["tags"])[:, 0] == np.asarray(batch["tags"])[:, 0])
    assert not np.array_equal(np.asarray(p["tags"]), np.asarray(batch["tags"]))
    assert np.isfinite(np.asarray(jnp.stack([metrics[f"{k}_loss"] for k in (
        "global_summary", "local_caption", "global_tags", "objects_summary", "local_tags")]))).all()


def test_name_texts_follow_the_caption_and_leave_the_stream_unchanged(data_dir):
    from vlm_jax.data import emoji_tfds, image_text
    from vlm_jax.data.tokenizer import TRAIN_TEMPLATES

    def stream(**kw):
        cfg = ml_collections.ConfigDict(dict(name="emoji", data_dir=data_dir, num_threads=0, caption_noise=0.5,
                                             train_styles=("noto",), **kw))
        data = image_text.get(cfg)
        return data, data.train(64, 2, 0, 1)

    data, plain = stream()
    _, named = stream(name_texts=True)
    split = emoji_tfds.load_split(data_dir, "train", 64)
    names = dict(zip(split["concept"].tolist(), split["name"]))
    known = sorted(set(names.values()))
    name_of = {tuple(tokens.tolist()): n for n, tokens in zip(known, data.tokenize(known))}
    noisy = 0
    for _, a, b in zip(range(2), plain, named):
        for key in ("image", "text", "concept"):
            np.testing.assert_array_equal(a[key], b[key])
        for concept, text, summary, tags in zip(b["concept"], b["text"], b["summary"], b["tags"]):
            own = names[int(concept)]
            assert tags.tolist() == data.tokenize([own])[0].tolist()  # the image's own name
            # the summary is the name the caption uses: some template filled with it is the caption
            words = name_of[tuple(summary.tolist())]
            assert text.tolist() in data.tokenize([t.format(words) for t in TRAIN_TEMPLATES]).tolist()
            noisy += summary.tolist() != tags.tolist()
    assert noisy > 0  # under 50% caption noise, summaries follow the caption away from the image
    with pytest.raises(ValueError, match="name_texts"):
        stream(name_texts=True, languages=("en", "ko"))


def test_pyramidclip_through_train(tmp_path):
    from vlm_jax.config import apply_overrides, load_config
    from vlm_jax.train.trainer import Setup, finalize_config, train

    config = apply_overrides(finalize_config(load_config(
        "experiments/emoji_contrastive_family.py:method=pyramidclip,size=test,steps=2,batch=16")),
        ["mesh=[('data', 1)]", "evals.sets=[]", "checkpoint.every_steps=2", "log_every=1", "loss.global_cross=0.2",
         "loss.local_cross=0.5"])
    train(config, tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r.get("split") == "train"]
    assert len(steps) == 2
    for r in steps:
        want = 0.3 * (r["global_summary_loss"] + r["local_caption_loss"]) / 2 + \
            0.2 * (r["global_tags_loss"] + r["objects_summary_loss"]) / 2 + \
            0.5 * (r["local_tags_loss"] + r["objects_caption_loss"]) / 2
        assert r["loss"] == pytest.approx(want, rel=1e-5)
    for bad in (["loss.global_cross=0.7", "loss.local_cross=0.5"], ["data.name_texts=False"],
                ["grad_accum_steps=2"], ["loss.object_scale=0.4"]):
        with pytest.raises(ValueError):
            Setup(apply_overrides(config, bad))
