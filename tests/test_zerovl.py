"""ZeroVL: mixup InfoNCE against a float64 soft-target cross-entropy, the coin and α ~ Beta(β, β) against their
distributions, the objective's loss against a recomputation from its logged draw (both branches), debiased
sampling (every batch from one style, identified pixel by pixel; exact resume), and a run through train()."""
from __future__ import annotations

import json

import numpy as np
import pytest

from steps import family_objective, first_batch_and_params


def _soft_infonce(zimg, ztxt, t, alpha):
    """Float64: rows and columns of t·zimg·ztxtᵀ against targets α·I + (1 − α)·(the anti-diagonal)."""
    logits = t * np.asarray(zimg, np.float64) @ np.asarray(ztxt, np.float64).T
    n = len(logits)
    target = alpha * np.eye(n) + (1 - alpha) * np.eye(n)[::-1]

    def ce(x):
        logp = x - x.max(1, keepdims=True)
        logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
        return -np.mean(np.sum(target * logp, 1))

    return 0.5 * (ce(logits) + ce(logits.T))


def test_mixup_infonce_against_soft_targets():
    from vlm_jax.losses.mixup import mixup_infonce

    rng = np.random.default_rng(0)
    z = [rng.normal(size=(7, 5)) for _ in range(2)]
    zimg, ztxt = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in z)
    for alpha in (1.0, 0.3, 0.0):
        got, _ = mixup_infonce(zimg.astype(np.float32), ztxt.astype(np.float32), 4.0, alpha)
        np.testing.assert_allclose(float(got), _soft_infonce(zimg, ztxt, 4.0, alpha), rtol=1e-5)


def test_coin_and_alpha_follow_their_distributions():
    import jax
    from scipy import stats

    from vlm_jax.losses.mixup import draw_mixup

    n = 4000
    alpha, images = jax.vmap(lambda k: draw_mixup(k, 0.1))(jax.random.split(jax.random.key(0), n))
    share = float(np.mean(images))
    assert abs(share - 0.5) < 4 * np.sqrt(0.25 / n)
    # α against Beta(0.1, 0.1) in bins (float32 rounds a tenth of the draws to exactly 1, so no KS on raw values)
    edges = np.array([0.0, 0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99, 1.0])
    counts = np.histogram(np.asarray(alpha, np.float64), bins=edges)[0]
    expected = n * np.diff(stats.beta(0.1, 0.1).cdf(edges))
    assert stats.chisquare(counts, expected).pvalue > 1e-3


@pytest.fixture(scope="module")
def objective():
    return family_objective("zerovl")


def test_loss_equals_a_recomputation_from_the_logged_draw(objective):
    import jax

    obj = objective
    batch, params = first_batch_and_params(obj)
    model = obj.model()
    loss_fn = jax.jit(lambda k: obj.loss(params, {}, batch, k))
    seen = set()
    for seed in range(12):
        loss, (metrics, _) = loss_fn(jax.random.key(seed))
        a, mixed_images = float(metrics["mixup_alpha"]), bool(metrics["mixup_images"])
        seen.add(mixed_images)
        image = np.asarray(batch["image"], np.float64)
        if mixed_images:
            image = a * image + (1 - a) * image[::-1]
        (zimg, _), aux = model.apply({"params": params}, image.astype(np.float32), batch["text"])
        text = np.asarray(aux["txt/unnormed"], np.float64)
        if not mixed_images:
            text = a * text + (1 - a) * text[::-1]
        ztxt = text / np.linalg.norm(text, axis=1, keepdims=True)
        np.testing.assert_allclose(float(loss), _soft_infonce(zimg, ztxt, float(aux["t"]), a), rtol=2e-5)
        if seen == {True, False}:
            break
    assert seen == {True, False}, "both branches of the coin"


def test_sources_sampling_draws_each_batch_from_one_style(data_dir):
    from vlm_jax.data import emoji_tfds, pipeline
    from vlm_jax.data.tokenizer import Tokenizer

    styles = ("noto", "twitter", "facebook")
    refs = {s: emoji_tfds.load_split(data_dir, "train" if s == "noto" else s) for s in styles}
    refs = {s: dict(zip(r["concept"].tolist(), r["image"])) for s, r in refs.items()}
    tok = Tokenizer(emoji_tfds.tokenizer_path(data_dir))

    def stream():
        return iter(pipeline.make_train_dataset(data_dir, "train", tok, image_size=64, text_len=8, batch_size=16,
                                                seed=3, augment={}, styles=styles, sampling="sources",
                                                num_threads=0))

    it = stream()
    batches = [next(it) for _ in range(9)]
    drawn = []
    for b in batches:
        pixels = np.rint((np.asarray(b["image"], np.float64) + 1) * 127.5)
        match = [{s for s in styles if int(c) in refs[s] and np.abs(pixels[i] - refs[s][int(c)]).max() <= 1}
                 for i, c in enumerate(b["concept"])]
        common = set.intersection(*match)
        assert len(common) == 1, match  # one style holds every example of the batch
        drawn.append(common.pop())
    assert set(drawn) == set(styles)  # over 9 batches every style comes up
    state_it = stream()
    for _ in range(4):
        next(state_it)
    state = state_it.get_state()
    resumed = stream()
    resumed.set_state(state)
    for want in batches[4:]:
        np.testing.assert_array_equal(next(resumed)["image"], want["image"])


def test_zerovl_through_train(tmp_path):
    from vlm_jax.config import apply_overrides, load_config
    from vlm_jax.train.trainer import Setup, finalize_config, train

    config = apply_overrides(finalize_config(load_config(
        "experiments/emoji_contrastive_family.py:method=zerovl,size=test,steps=3,batch=16")),
        ["mesh=[('data', 1)]", "evals.sets=[]", "checkpoint.every_steps=3", "log_every=1"])
    assert config.data.sampling == "sources"
    train(config, tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r.get("split") == "train"]
    assert len(steps) == 3 and all(0.0 <= r["mixup_alpha"] <= 1.0 and r["mixup_images"] in (0.0, 1.0) for r in steps)
    with pytest.raises(ValueError, match="grad_accum_steps"):
        Setup(apply_overrides(config, ["grad_accum_steps=2"]))
