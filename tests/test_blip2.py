"""BLIP-2 stage 1: the Q-Former's three attention masks against a construction from the paper's rules, position by
position; the contrastive pass in one joint sequence equals the image and the text run apart; the contrastive loss
against float64; hard negatives never the matched pair and drawn in proportion to the softmax; through train()."""
from __future__ import annotations

import json
import math

import jax
import numpy as np
import pytest

ONE = "mesh=[('data', 1)]"


def _expected_mask(kind: str, q: int, valid: np.ndarray) -> np.ndarray:
    """BLIP-2 Fig. 2's masks, one (query, key) pair at a time."""
    b, length = valid.shape
    n = q + length
    out = np.zeros((b, 1, n, n), bool)
    for row in range(b):
        for i in range(n):
            for j in range(n):
                key_ok = j < q or bool(valid[row, j - q])
                i_query, j_query = i < q, j < q
                if kind == "itm":  # bi-directional: all see all
                    rule = True
                elif kind == "itc":  # uni-modal: no interaction between queries and text
                    rule = i_query == j_query
                else:  # multimodal causal: queries see queries; text sees queries and its own past
                    rule = j_query if i_query else (j_query or j <= i)
                out[row, 0, i, j] = key_ok and rule
    return out


@pytest.mark.parametrize("kind", ["itc", "itm", "itg"])
def test_qformer_masks_against_the_papers_rules(kind):
    from vlm_jax.models.qformer import qformer_mask

    valid = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], bool)
    got = np.asarray(qformer_mask(kind, 3, valid))
    np.testing.assert_array_equal(got, _expected_mask(kind, 3, valid))


@pytest.fixture(scope="module")
def stage1(data_dir):
    from vlm_jax.config import load_config
    from vlm_jax.train.objective import get_objective
    from vlm_jax.train.trainer import finalize_config

    obj = get_objective(finalize_config(load_config("experiments/emoji_blip2.py:size=test")))
    model = obj.model()
    rng = np.random.default_rng(0)
    image = rng.uniform(-1, 1, (4, 32, 32, 3)).astype(np.float32)
    text = np.asarray(obj.data.tokenize(["a red apple", "two cats", "a car", "a smiling face with sunglasses"]))
    params = jax.tree.map(lambda x: x.unbox() if hasattr(x, "unbox") else x,
                          model.init(jax.random.key(0), image, text)["params"], is_leaf=lambda x: hasattr(x, "unbox"))
    return obj, model, params, image, text


def test_joint_contrastive_pass_equals_the_modalities_apart(stage1):
    obj, model, params, image, text = stage1
    feats = model.apply({"params": params}, image, method="features")
    cls_text = model.apply({"params": params}, text, method="cls_text")
    zq, zt, _ = model.apply({"params": params}, feats, cls_text, method="itc")
    alone_q = model.apply({"params": params}, image, method="image_queries")
    alone_t = model.apply({"params": params}, cls_text, method="text_embedding")
    np.testing.assert_allclose(np.asarray(zq), np.asarray(alone_q), atol=2e-6)
    np.testing.assert_allclose(np.asarray(zt), np.asarray(alone_t), atol=2e-6)
    # and the matching pass does mix them: the queries read the text
    q_itm, _ = model.apply({"params": params}, feats, cls_text, "itm", method=lambda m, *a: m.qformer_module(*a))
    q_itc, _ = model.apply({"params": params}, feats, cls_text, "itc", method=lambda m, *a: m.qformer_module(*a))
    assert not np.allclose(np.asarray(q_itm), np.asarray(q_itc), atol=1e-4)


def test_itc_loss_and_hard_negatives():
    from vlm_jax.losses.blip2 import hard_negatives, itc_loss

    rng = np.random.default_rng(1)
    zq = rng.normal(size=(5, 3, 8))
    zq /= np.linalg.norm(zq, axis=-1, keepdims=True)
    zt = rng.normal(size=(5, 8))
    zt /= np.linalg.norm(zt, axis=-1, keepdims=True)
    t = 7.0
    sim = np.array([[max(zq[i, q] @ zt[j] for q in range(3)) for j in range(5)] for i in range(5)])
    logits = t * sim
    lse_r = np.log(np.exp(logits).sum(1))
    lse_c = np.log(np.exp(logits).sum(0))
    want = 0.5 * (np.mean(lse_r - np.diag(logits)) + np.mean(lse_c - np.diag(logits)))
    loss, _ = itc_loss(zq.astype(np.float32), zt.astype(np.float32), np.float32(t))
    np.testing.assert_allclose(float(loss), want, rtol=2e-6)
    # negatives: never the pair; frequencies follow softmax(t·sim) without the diagonal
    keys = jax.random.split(jax.random.key(0), 4000)
    neg_t, neg_i = jax.vmap(lambda k: hard_negatives(k, sim.astype(np.float32), np.float32(2.0)))(keys)
    neg_t, neg_i = np.asarray(neg_t), np.asarray(neg_i)
    assert not np.any(neg_t == np.arange(5)) and not np.any(neg_i == np.arange(5))
    for row in range(5):
        p = np.exp(2.0 * sim[row]) * (np.arange(5) != row)
        p /= p.sum()
        freq = np.bincount(neg_t[:, row], minlength=5) / len(keys)
        assert np.all(np.abs(freq - p) < 4 * np.sqrt(p * (1 - p) / len(keys)) + 1e-9), (row, freq, p)
        pc = np.exp(2.0 * sim[:, row]) * (np.arange(5) != row)
        pc /= pc.sum()
        freq_c = np.bincount(neg_i[:, row], minlength=5) / len(keys)
        assert np.all(np.abs(freq_c - pc) < 4 * np.sqrt(pc * (1 - pc) / len(keys)) + 1e-9), (row, freq_c, pc)


def test_blip2_stage1_through_train(tmp_path, data_dir):
    from vlm_jax.config import apply_overrides, load_config
    from vlm_jax.train.trainer import finalize_config, train

    config = apply_overrides(finalize_config(load_config("experiments/emoji_blip2.py:size=test,steps=3,batch=16")),
                             [ONE, "progress=False", "checkpoint.every_steps=0", "checkpoint.async_save=False",
                              "loss.itm_weight=0.5"])
    out = train(config, tmp_path / "run")
    ev = out["evals"]
    assert 0.0 <= ev["zeroshot/emoji/cross/all/top@1/model"] <= 1.0
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in logged if r.get("split") == "train" and "itc_loss" in r]
    assert len(train_rows) == 3
    for r in train_rows:  # the logged loss is the weighted sum of the three logged terms
        assert math.isclose(r["loss"], r["itc_loss"] + 0.5 * r["itm_loss"] + r["itg_loss"], rel_tol=1e-5)
        assert 0.0 <= r["itm_acc"] <= 1.0
    from vlm_jax.train.objective import get_objective

    with pytest.raises(ValueError, match="grad_accum_steps must be 1"):
        get_objective(apply_overrides(config, ["grad_accum_steps=2"]))


def test_evaluator_score_is_the_best_query_and_reference():
    from vlm_jax.evals.embedder import QueryMaxEmbedder

    rng = np.random.default_rng(2)
    images, refs = rng.normal(size=(6, 3, 4)), rng.normal(size=(2, 5, 4))  # 3 queries; 2 references per class
    emb = QueryMaxEmbedder(None, None, None)
    i2t, t2i = emb.similarity(images, refs)
    want = np.array([[max(images[n, q] @ refs[s, c] for q in range(3) for s in range(2)) for c in range(5)]
                     for n in range(6)])
    np.testing.assert_allclose(i2t, want, rtol=1e-12)
    np.testing.assert_array_equal(i2t, t2i)
    np.testing.assert_allclose(emb.similarity(images, refs[0])[0],
                               [[max(images[n, q] @ refs[0, c] for q in range(3)) for c in range(5)] for n in range(6)])
