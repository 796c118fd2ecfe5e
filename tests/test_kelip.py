"""KELIP: each local view is a crop of its own image at the lower resolution (found by brute force over every crop
position), the loss is the mean over the views of InfoNCE (float64), GradCache with the view rows equals the big
batch, and a bilingual run through train() evaluates in English and Korean and logs the views' losses."""
from __future__ import annotations

import json

import numpy as np
import pytest

from steps import big_batch_and_gradcache, family_objective, first_batch_and_params


def _infonce(zimg: np.ndarray, ztxt: np.ndarray, t: float) -> float:
    logits = t * np.asarray(zimg, np.float64) @ np.asarray(ztxt, np.float64).T
    lse = lambda x, ax: np.log(np.exp(x - x.max()).sum(ax)) + x.max()  # noqa: E731
    return 0.5 * (np.mean(lse(logits, 1) - np.diag(logits)) + np.mean(lse(logits, 0) - np.diag(logits)))


@pytest.fixture(scope="module")
def objective():
    return family_objective("kelip")


def test_views_are_crops_of_their_image_and_the_loss_is_their_mean(objective):
    import jax
    import jax.numpy as jnp

    from vlm_jax.models.siglip2 import image_params_at

    obj = objective
    batch, params = first_batch_and_params(obj)
    out = obj._towers(params, {}, batch, jax.random.key(5), train=False)
    views = np.asarray(out.rows["local_img"])
    n_views, side, s = views.shape[1], obj.local_side, batch["image"].shape[1]
    assert n_views == int(obj.cfg["local_crops"]) == 2 and side == s // 2
    # every crop position of every image, embedded at the local resolution
    local = image_params_at(params, obj.grid, obj.local_grid)
    embed = jax.jit(lambda x: obj.model().apply({"params": local}, x, None)[0][0])
    images = np.asarray(batch["image"])
    positions = [(r, c) for r in range(s - side + 1) for c in range(s - side + 1)]
    for i in range(0, len(images), 4):  # 4 images: every view is one of their own crops, views differ
        crops = np.stack([images[i, r:r + side, c:c + side] for r, c in positions])
        z = np.asarray(embed(jnp.asarray(crops)))
        picked = [int(np.argmin(np.abs(z - views[i, v]).max(1))) for v in range(n_views)]
        for v, p in enumerate(picked):
            np.testing.assert_allclose(z[p], views[i, v], atol=1e-5)
        others = np.stack([images[j, :side, :side] for j in range(len(images)) if j != i])
        assert np.abs(np.asarray(embed(jnp.asarray(others))) - views[i, 0]).max(1).min() > 1e-3
    loss, metrics = obj._contrastive(out.zimg, out.ztxt, out.t, out.b, None, out.rows)
    t = float(out.t)
    want = [_infonce(out.zimg, out.ztxt, t)] + [_infonce(views[:, v], out.ztxt, t) for v in range(n_views)]
    np.testing.assert_allclose(float(metrics["global_loss"]), want[0], rtol=1e-5)
    np.testing.assert_allclose(float(metrics["local_loss"]), np.mean(want[1:]), rtol=1e-5)
    np.testing.assert_allclose(float(loss), np.mean(want), rtol=1e-5)


def test_gradcache_with_view_rows_equals_the_big_batch():
    """Whole-image views (crop_fraction 1, resized to the local resolution) are the same draw in every
    micro-batch, so GradCache must equal the big batch."""
    import jax
    import jax.numpy as jnp

    from vlm_jax.config import apply_overrides, load_config
    from vlm_jax.train.objective import get_objective
    from vlm_jax.train.trainer import finalize_config

    obj = get_objective(apply_overrides(finalize_config(load_config(
        "experiments/emoji_contrastive_family.py:method=kelip,size=test,steps=3,batch=16")), ["loss.crop_fraction=1.0"]))
    batch, params = first_batch_and_params(obj)
    _, metrics, g_big = big_batch_and_gradcache(obj, params, {}, batch, jax.random.key(2))
    assert float(metrics["local_loss"]) > 0 and float(jnp.abs(g_big["img"]["pos_embedding"]).max()) > 0


def test_bilingual_kelip_through_train(tmp_path):
    from vlm_jax.config import apply_overrides, load_config
    from vlm_jax.train.trainer import finalize_config, train

    config = apply_overrides(finalize_config(load_config(
        "experiments/emoji_contrastive_family.py:method=kelip,size=test,steps=3,batch=16")),
        ["mesh=[('data', 1)]", "evals.sets=['emoji']", "checkpoint.every_steps=3", "log_every=1"])
    assert tuple(config.data.languages) == ("en", "ko")
    out = train(config, tmp_path / "run")
    ev = out["evals"]
    for lang in ("en", "ko"):
        assert 0.0 <= ev[f"zeroshot/emoji/cross/{lang}/all/top@1/model"] <= 1.0
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r.get("split") == "train"]
    assert len(steps) == 3
    n = int(config.loss.local_crops)
    for r in steps:  # the logged loss is the mean over the global view and the n local ones
        assert r["loss"] == pytest.approx((r["global_loss"] + n * r["local_loss"]) / (1 + n), rel=1e-5)
