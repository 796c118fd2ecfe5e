"""DeCLIP: the FIFO queue keeps the last K rows in order (against a deque) and its nearest neighbours equal brute
force; word deletion keeps order, BOS/EOS and padding at the tail at the drawn rate; SimSiam against float64 with
no gradient through the targets; the objective's NN term against float64 on a planted queue and its queue update
against the captions' embeddings; and a run through train() stopped and resumed equal to an uninterrupted one,
queue included."""
from __future__ import annotations

import collections

import numpy as np
import pytest

from steps import family_objective, first_batch_and_params


def test_queue_keeps_the_last_rows_in_order_and_neighbours_are_brute_force():
    import jax.numpy as jnp

    from vlm_jax.losses.declip import enqueue, nearest_neighbours

    rng = np.random.default_rng(0)
    k, d = 7, 4
    queue, pointer, filled = jnp.zeros((k, d)), jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32)
    ref: collections.deque = collections.deque(maxlen=k)
    for step in range(6):
        rows = rng.normal(size=(3, d)).astype(np.float32)
        queries = rng.normal(size=(5, d)).astype(np.float32)
        if int(filled):  # neighbours among what is queued so far
            got, idx = nearest_neighbours(queries, queue, filled)
            held = np.asarray(queue)[: int(filled)]
            want = held[np.argmax(queries.astype(np.float64) @ held.T.astype(np.float64), axis=1)]
            np.testing.assert_array_equal(np.asarray(got), want)
        queue, pointer, filled = enqueue(queue, pointer, filled, rows)
        ref.extend(rows)
        assert int(filled) == len(ref)
        held = np.asarray(queue)
        ordered = np.concatenate([held[int(pointer):], held[:int(pointer)]]) if len(ref) == k else held[:len(ref)]
        np.testing.assert_array_equal(ordered, np.stack(ref))  # oldest first


def test_word_deletion_keeps_order_specials_and_rate():
    import jax

    from vlm_jax.losses.declip import delete_tokens

    rng = np.random.default_rng(1)
    tokens = np.zeros((400, 12), np.int32)
    for row in tokens:
        n = rng.integers(3, 12)
        row[0], row[1:n - 1], row[n - 1] = 1, rng.integers(5, 50, n - 2), 2  # BOS, words, EOS, then padding
    out = np.asarray(delete_tokens(jax.random.key(0), tokens, 0, (1, 2), 0.3))
    kept = dropped = 0
    for src, got in zip(tokens, out):
        src_real, got_real = list(src[src != 0]), list(got[got != 0])
        assert np.all(got[len(got_real):] == 0)  # padding only at the tail
        assert got_real[0] == 1 and got_real[-1] == 2  # BOS and EOS survive
        it = iter(src_real)
        assert all(tok in it for tok in got_real)  # a subsequence: order kept
        kept += len(got_real) - 2
        dropped += len(src_real) - len(got_real)
    rate = dropped / (kept + dropped)
    assert abs(rate - 0.3) < 4 * np.sqrt(0.3 * 0.7 / (kept + dropped))


def test_simsiam_against_float64_and_stop_gradient():
    import jax

    from vlm_jax.losses.declip import simsiam_loss

    rng = np.random.default_rng(2)
    p1, z1, p2, z2 = (rng.normal(size=(6, 5)).astype(np.float32) for _ in range(4))
    cos = lambda a, b: np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)  # noqa: E731
    want = -0.5 * (cos(p1.astype(np.float64), z2).mean() + cos(p2.astype(np.float64), z1).mean())
    np.testing.assert_allclose(float(simsiam_loss(p1, z1, p2, z2)), want, rtol=1e-5)
    g = jax.grad(simsiam_loss, argnums=(0, 1))(p1, z1, p2, z2)
    assert float(np.abs(g[0]).max()) > 0 and float(np.abs(g[1]).max()) == 0.0


@pytest.fixture(scope="module")
def objective():
    return family_objective("declip")


def test_nn_term_and_queue_update_against_float64(objective):
    import jax
    import jax.numpy as jnp

    obj = objective
    batch, params = first_batch_and_params(obj)
    (zimg, ztxt), aux = obj.model().apply({"params": params}, batch["image"], batch["text"])
    k, d = int(obj.cfg["queue_size"]), ztxt.shape[1]
    rng = np.random.default_rng(3)
    planted = rng.normal(size=(k, d))
    planted /= np.linalg.norm(planted, axis=1, keepdims=True)
    filled = 40
    extra = {"queue": jnp.asarray(planted, jnp.float32), "pointer": jnp.asarray(filled, jnp.int32),
             "filled": jnp.asarray(filled, jnp.int32)}
    loss, (metrics, new) = jax.jit(lambda e: obj.loss(params, e, batch, jax.random.key(4)))(extra)
    # the NN term: image i against the queued row nearest its caption, InfoNCE in float64
    zi, zt = np.asarray(zimg, np.float64), np.asarray(ztxt, np.float64)
    nn_rows = planted[:filled][np.argmax(zt @ planted[:filled].T, axis=1)]
    logits = float(aux["t"]) * zi @ nn_rows.T
    lse = lambda x, ax: np.log(np.exp(x - x.max()).sum(ax)) + x.max()  # noqa: E731
    want = 0.5 * (np.mean(lse(logits, 1) - np.diag(logits)) + np.mean(lse(logits, 0) - np.diag(logits)))
    np.testing.assert_allclose(float(metrics["nn_loss"]), want, rtol=1e-4)
    w = {n: float(obj.cfg[f"{n}_weight"]) for n in ("ssl", "mlm", "nn")}
    parts = (1 - sum(w.values())) * metrics["multiview_loss"] + w["ssl"] * metrics["simsiam_loss"] + \
        w["mlm"] * metrics["mlm_loss"] + w["nn"] * metrics["nn_loss"]
    np.testing.assert_allclose(float(loss), float(parts), rtol=1e-5)
    # the batch's caption embeddings were written after the planted rows, the rest untouched
    b = len(zt)
    np.testing.assert_allclose(np.asarray(new["queue"])[filled:filled + b], zt, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(new["queue"])[:filled], planted[:filled].astype(np.float32))
    assert int(new["pointer"]) == filled + b and int(new["filled"]) == filled + b


def test_declip_resumes_its_queue_exactly(tmp_path):
    import jax

    from vlm_jax.config import apply_overrides, load_config
    from vlm_jax.train.trainer import finalize_config, train

    config = apply_overrides(finalize_config(load_config(
        "experiments/emoji_contrastive_family.py:method=declip,size=test,steps=4,batch=16")),
        ["mesh=[('data', 1)]", "evals.sets=[]", "checkpoint.every_steps=2", "loss.queue_size=24"])  # wraps at the second step
    full = train(config, tmp_path / "full")
    train(config, tmp_path / "cut", stop_after=2)
    resumed = train(config, tmp_path / "cut")
    a, b = jax.device_get(full["state"]), jax.device_get(resumed["state"])
    assert int(a.extra["filled"]) == 24 and int(a.extra["pointer"]) == (4 * 16) % 24
    for part in ("extra", "params"):
        same = jax.tree.map(lambda x, y: bool(np.array_equal(x, y)), getattr(a, part), getattr(b, part))
        assert all(jax.tree.leaves(same)), part
