"""OneR: the contextual mixup's kept tokens against a NumPy count, its limits (λ = 1 is the image alone, λ = 0 the
partner's caption alone) through the one tower, the loss against float64 soft-target cross-entropies of the
model's embeddings, and a run through train()."""
from __future__ import annotations

import json

import numpy as np
import pytest

from steps import family_objective, first_batch_and_params


def _np_ce(logits, target):
    """Mean row cross-entropy in float64."""
    logp = logits - logits.max(1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
    return -np.mean(np.sum(target * logp, 1))


def _np_contrast(za, zb, t, target):
    """Symmetric InfoNCE of t·za·zbᵀ against `target` rows (its transpose for the columns), float64."""
    logits = t * np.asarray(za, np.float64) @ np.asarray(zb, np.float64).T
    return 0.5 * (_np_ce(logits, target) + _np_ce(logits.T, target.T))


def test_mixup_token_masks_keep_the_lambda_share():
    import jax

    from vlm_jax.losses.oner import mixup_token_masks

    lengths = np.array([1, 3, 8, 12, 16, 5])
    valid = np.arange(16)[None, :] < lengths[:, None]
    for i, lam in enumerate((0.0, 0.03, 0.37, 0.5, 0.81, 1.0)):
        keep_img, keep_txt = map(np.asarray, mixup_token_masks(jax.random.key(i), valid, 16, np.float32(lam)))
        assert (keep_img.sum(1) == np.round(lam * 16)).all()
        for row, n in enumerate(lengths):
            k = int(np.round((1 - lam) * n))
            want = np.zeros(16, bool)
            want[:k] = True  # the caption's first k tokens, never a pad
            np.testing.assert_array_equal(keep_txt[row], want)
        if 0 < np.round(lam * 16) < 16:  # the patches are drawn per row
            assert len({tuple(r) for r in keep_img}) > 1


@pytest.fixture(scope="module")
def objective():
    return family_objective("oner")


def test_contextual_mixup_limits_are_one_modality_through_the_one_tower(objective):
    import jax

    obj = objective
    batch, params = first_batch_and_params(obj)
    (zimg, ztxt), _ = obj.model().apply({"params": params}, batch["image"], batch["text"])
    run = jax.jit(lambda lam: obj.embeddings(params, batch, jax.random.key(0), False, lam)[0][0])
    at_one, at_zero = run(np.float32(1.0)), run(np.float32(0.0))
    np.testing.assert_allclose(np.asarray(at_one["mix"]), np.asarray(zimg), atol=2e-6)
    np.testing.assert_allclose(np.asarray(at_zero["mix"]), np.asarray(ztxt)[::-1], atol=2e-6)
    np.testing.assert_allclose(np.asarray(at_one["image"]), np.asarray(zimg), atol=2e-6)
    np.testing.assert_allclose(np.asarray(at_one["text"]), np.asarray(ztxt), atol=2e-6)
    # the joint sequence is neither modality alone
    assert np.abs(np.asarray(at_one["cross"]) - np.asarray(zimg)).max() > 1e-3
    assert np.abs(np.asarray(at_one["cross"]) - np.asarray(ztxt)).max() > 1e-3


def test_loss_against_float64_of_the_embeddings(objective):
    import jax

    obj = objective
    batch, params = first_batch_and_params(obj)
    key = jax.random.key(3)
    loss, (metrics, _) = jax.jit(lambda k: obj.loss(params, {}, batch, k))(key)
    (z, t), lam = jax.jit(lambda k: obj.embeddings(params, batch, k))(key)
    lam, t = float(lam), float(t)
    assert float(metrics["mixup_lambda"]) == lam and 0.0 < lam < 1.0
    n = len(z["image"])
    eye = np.eye(n)
    soft = lam * eye + (1 - lam) * eye[::-1]  # image i's share λ, the partner B − 1 − i's caption 1 − λ
    itc = _np_contrast(z["image"], z["text"], t, eye)
    xmc = 0.5 * (_np_contrast(z["cross"], z["image"], t, eye) + _np_contrast(z["cross"], z["text"], t, eye))
    cmc = 0.5 * (_np_contrast(z["mix"], z["image"], t, soft) + _np_contrast(z["mix"], z["text"], t, soft))
    np.testing.assert_allclose(float(loss), itc + xmc + cmc, rtol=2e-5)
    np.testing.assert_allclose([float(metrics[k]) for k in ("itc_loss", "xmc_loss", "cmc_loss")], [itc, xmc, cmc],
                               rtol=2e-5)


def test_oner_through_train(tmp_path):
    from vlm_jax.config import ConfigError, apply_overrides, load_config
    from vlm_jax.train.trainer import Setup, finalize_config, train

    config = apply_overrides(finalize_config(load_config(
        "experiments/emoji_contrastive_family.py:method=oner,size=test,steps=3,batch=16")),
        ["mesh=[('data', 1)]", "checkpoint.every_steps=3", "log_every=1"])
    out = train(config, tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r.get("split") == "train"]
    assert len(steps) == 3 and all(0.0 <= r["mixup_lambda"] <= 1.0 and np.isfinite(r["cmc_loss"]) for r in steps)
    assert any(k.startswith("zeroshot") or "top1" in k for k in out["evals"])
    with pytest.raises(ValueError, match="grad_accum_steps"):
        Setup(apply_overrides(config, ["grad_accum_steps=2"]))
    with pytest.raises((ConfigError, ValueError), match="temperature_init"):  # InfoNCE only: no logit bias
        Setup(apply_overrides(config, ["model.bias_init=-10.0"]))
    with pytest.raises((ConfigError, ValueError), match="max_len"):  # the valid text keys are named
        with config.unlocked():
            config.model.text.width = 64
        Setup(config)
