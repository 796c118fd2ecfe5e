"""FLAVA-style objective: BERT masking exact and 80/10/10, MLM loss against a float64 NumPy reference on masked
positions only, ITM hard negatives drawn from the softmax of the similarities without the positive (statistical
check), and a run through `train()` whose total loss is the weighted sum of its parts, with every evaluator."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlm_jax.config import apply_overrides, load_config
from vlm_jax.evals.matching import hardest_other_class
from vlm_jax.losses.itm import negative_weights, sample_hard_negatives
from vlm_jax.losses.masked import mlm_masking
from vlm_jax.models.flava import FLAVA
from vlm_jax.train.trainer import Setup, finalize_config, train

QUIET = ["progress=False", "batch_size=16", "evals.batch_size=128", "log_every=1", "checkpoint.every_steps=100"]


def _config(arg, *overrides):
    return apply_overrides(finalize_config(load_config(f"experiments/emoji_flava.py:{arg}")), [*QUIET, *overrides])


def test_bert_masking_is_exact_and_80_10_10():
    rng = np.random.default_rng(0)
    lengths = rng.integers(0, 17, 5000)
    tokens = np.zeros((5000, 16), np.int32)
    for i, n in enumerate(lengths):
        tokens[i, :n] = rng.integers(5, 50, n)
    maskable = tokens != 0
    inputs, chosen = (np.asarray(x) for x in mlm_masking(jax.random.key(1), jnp.asarray(tokens),
                                                         jnp.asarray(maskable), 99, (5, 50), 0.15))
    expected = np.where(lengths > 0, np.maximum(1, np.round(0.15 * lengths)), 0)
    assert (chosen.sum(1) == expected).all()
    assert not (chosen & ~maskable).any() and (inputs[~chosen] == tokens[~chosen]).all()
    picked, original = inputs[chosen], tokens[chosen]
    n = len(picked)
    as_mask = np.mean(picked == 99)
    unchanged = np.mean(picked == original)  # kept (10%) plus random draws that hit the original (10% · 1/45)
    assert abs(as_mask - 0.8) < 5 * np.sqrt(0.16 / n)
    assert abs(unchanged - (0.1 + 0.1 / 45)) < 5 * np.sqrt(0.1 * 0.9 / n)
    assert ((picked == 99) | ((picked >= 5) & (picked < 50))).all()


def test_hard_negatives_follow_the_softmax_without_the_positive():
    """Empirical draw frequencies equal softmax(sim) over the other columns (5 sigma); same-label columns never."""
    rng = np.random.default_rng(2)
    sim = jnp.asarray(rng.normal(size=(6, 6)) * 2, jnp.float32)
    draws = jax.vmap(lambda k: sample_hard_negatives(k, sim)[0])(jax.random.split(jax.random.key(0), 20000))
    freq = np.stack([np.bincount(np.asarray(draws)[:, i], minlength=6) / 20000 for i in range(6)])
    s = np.asarray(sim, np.float64)
    expected = np.exp(s - s.max(1, keepdims=True))
    np.fill_diagonal(expected, 0)
    expected /= expected.sum(1, keepdims=True)
    assert np.all(np.abs(freq - expected) <= 5 * np.sqrt(expected * (1 - expected) / 20000) + 1e-9)
    np.testing.assert_allclose(np.asarray(negative_weights(sim)), expected, rtol=1e-5, atol=1e-7)
    labels = jnp.array([0, 1, 0, 2, 2, 3])
    neg_txt, neg_img = jax.vmap(lambda k: sample_hard_negatives(k, sim, labels))(jax.random.split(jax.random.key(1), 500))
    for draws in (np.asarray(neg_txt), np.asarray(neg_img)):
        assert (np.asarray(labels)[draws] != np.asarray(labels)[None]).all()


def test_hardest_other_class_by_brute_force():
    rng = np.random.default_rng(3)
    img, cls = rng.normal(size=(20, 4)), rng.normal(size=(7, 4))
    labels = rng.integers(0, 7, 20)
    got = hardest_other_class(img, cls, labels)
    for i in range(20):
        scores = [(img[i] @ cls[c], c) for c in range(7) if c != labels[i]]
        assert got[i] == max(scores)[1]


@pytest.fixture(scope="module")
def mlm_setup(data_dir):
    setup = Setup(_config("size=test,parts=mlm", "mesh=[('data', 1)]"))
    state = setup.init_state(jax.random.key(0))
    batch = next(iter(setup.objective.train_data(8, 0, 0, 1)))
    return setup.objective, state.params, {k: jnp.asarray(v) for k, v in batch.items()}


def test_mlm_loss_is_float64_cross_entropy_on_masked_positions(mlm_setup):
    objective, params, batch = mlm_setup
    rng = jax.random.key(5)
    loss, (metrics, _) = objective.loss(params, {}, batch, rng)
    masked, chosen = objective._mlm_inputs(jax.random.fold_in(rng, 3), batch["text"])
    model = objective.model()
    states = model.apply({"params": params}, masked, method=FLAVA.encode_text)["states"]
    logits = np.asarray(model.apply({"params": params}, states, method=FLAVA.mlm_logits), np.float64)
    text, chosen = np.asarray(batch["text"]), np.asarray(chosen)
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, text[..., None], -1)[..., 0]
    assert chosen.any() and not chosen[text == 0].any()
    assert float(loss) == pytest.approx(nll[chosen].mean(), rel=1e-5)
    assert float(metrics["mlm_tokens"]) == chosen.sum()


def test_flava_trains_with_every_loss_and_evaluator(data_dir, tmp_path):
    """Through train(): each step's loss is the weighted sum of its five parts; every evaluator reports."""
    out = train(_config("size=test", "total_steps=3", "loss.mim_weight=2.0"), tmp_path / "run")
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r.get("split") == "train"]
    assert len(steps) == 3
    for r in steps:
        parts = r["contrastive_loss"] + r["itm_loss"] + r["mlm_loss"] + r["mmm_loss"] + 2.0 * r["mim_loss"]
        assert r["loss"] == pytest.approx(parts, rel=1e-5)
        assert r["mim_mask_ratio"] == 0.75
    ev = out["evals"]
    for key in ("zeroshot/emoji/cross/all/top@1/model", "probe/emoji/all/linear@1/model",
                "itm/emoji/cross/all/match_acc/model", "masked_text/emoji/cross/all/mlm_acc/model",
                "masked_text/emoji/cross/all/mmm_acc/model"):
        assert 0.0 <= ev[key] <= 1.0, key
    assert out["flops_per_step"] > 0
