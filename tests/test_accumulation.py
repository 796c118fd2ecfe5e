"""An accumulated step (`grad_accum_steps` = 4) is the big-batch step, through the trainer's own gradient function:
contrastive towers by GradCache (every negative kept), token-mean losses with micro-batches of very unequal token
counts (each mean divides by the whole batch's count), count metrics summed; objectives that draw random masks or
splits against the token-weighted mean of their micro-batches' own losses; SigLIP 2's auxiliary terms inside
GradCache against a plain Python loop over the micro-batches."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlm_jax import sharding as shd
from vlm_jax.config import apply_overrides, load_config
from vlm_jax.train.microbatch import split_microbatches
from vlm_jax.train.trainer import Setup, finalize_config

B, N = 16, 4
TINY = [f"batch_size={B}", "fsdp_min_size=0", "mesh=[('data', 1)]"]


def _setup(config, *more):
    return Setup(apply_overrides(finalize_config(load_config(config)), TINY + list(more)))


def _unequal(batch, pad=0):
    """The batch's rows reordered so that micro-batch 0 (rows 0, 4, 8, …) holds the longest captions and the last
    the shortest: the micro-batches' token counts differ as much as the data allows."""
    lengths = np.sum(np.asarray(batch["text"]) != pad, axis=1)
    order = np.argsort(-lengths, kind="stable")
    groups = order.reshape(N, B // N)  # group g: the g-th longest quarter
    perm = np.empty(B, int)
    for g in range(N):
        perm[g::N] = groups[g]
    return jax.tree.map(lambda v: np.asarray(v)[perm], batch)  # NaFlex images are a dict of arrays


def _real_batch(setup):
    it = iter(setup.objective.train_data(B, 0, 0, 1))
    batch = {k: v for k, v in next(it).items() if not k.startswith("_")}
    return _unequal(batch, setup.objective.data.special_ids["pad"])


def _grads(setup, params, extra, batch, rng, accum):
    setup.config.grad_accum_steps = accum
    glob = shd.global_batch(batch, setup.batch_sharding)
    with setup.context():
        loss, metrics, _, grads = jax.jit(setup._grads)(params, extra, glob, rng)
    return float(loss), jax.device_get(metrics), jax.device_get(grads)


def _close(got, want, rtol=2e-4, atol=1e-6):
    flat = dict(jax.tree_util.tree_leaves_with_path(want))
    for path, g in jax.tree_util.tree_leaves_with_path(got):
        np.testing.assert_allclose(g, flat[path], rtol=rtol, atol=atol, err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("config,count", [
    ("emoji_two_tower.py:size=test,loss=clip", None),
    ("emoji_two_tower.py:size=test,loss=siglip", None),
    ("tuxpaint_naflex.py:size=test,budgets=9+16", None),  # NaFlex patch dicts (rows of different grids) split too
    ("emoji_cappa.py:size=test,parallel=0.0", "tokens"),
    ("emoji_coca.py:size=test", "tokens"),
    ("multitask_pali.py:size=test", "tokens"),
])
def test_accumulated_step_equals_the_big_batch(data_dir, config, count):
    setup = _setup(f"experiments/{config}")
    batch = _real_batch(setup)
    state = setup.init_state(jax.random.key(0))
    rng = jax.random.key(1)
    big = _grads(setup, state.params, state.extra, batch, rng, 1)
    acc = _grads(setup, state.params, state.extra, batch, rng, N)
    np.testing.assert_allclose(acc[0], big[0], rtol=1e-5)
    _close(acc[2], big[2])
    if count:
        pad = setup.objective.data.special_ids["pad"]
        per_micro = [int(np.sum(np.asarray(batch["text"])[i::N] != pad)) for i in range(N)]
        assert max(per_micro) > 1.3 * min(per_micro), per_micro  # the test has teeth: counts differ
        assert acc[1][count] == pytest.approx(big[1][count])  # summed, not averaged
        assert big[1][count] > 0
    assert any(float(np.abs(g).max()) > 1e-4 for g in jax.tree.leaves(acc[2]))


@pytest.mark.parametrize("config,count", [
    ("emoji_prefixlm.py:size=test", "tokens"),
    ("emoji_flava.py:size=test,parts=mlm", "mlm_tokens"),
])
def test_random_draws_accumulate_as_the_token_weighted_mean(data_dir, config, count):
    """Objectives whose loss draws a split or a mask per micro-batch (from fold_in(rng, i)): the accumulated
    gradient is Σ_i (tokens_i / Σ tokens) · ∇(micro-batch i's own token mean)."""
    setup = _setup(f"experiments/{config}")
    obj = setup.objective
    batch = _real_batch(setup)
    state = setup.init_state(jax.random.key(0))
    rng = jax.random.key(1)
    acc = _grads(setup, state.params, state.extra, batch, rng, N)
    with setup.context():
        micro = split_microbatches(jax.tree.map(jnp.asarray, batch), N)
        parts = []
        for i in range(N):
            mb = jax.tree.map(lambda x: x[i], micro)
            grad = jax.jit(jax.value_and_grad(lambda p: obj.loss(p, state.extra, mb, jax.random.fold_in(rng, i),
                                                                 True), has_aux=True))
            (loss, (metrics, _)), g = grad(state.params)
            parts.append((float(loss), float(metrics[count]), jax.device_get(g)))
    total = sum(c for _, c, _ in parts)
    counts = [c for _, c, _ in parts]
    assert max(counts) > 1.2 * min(counts), counts
    want_loss = sum(c / total * loss for loss, c, _ in parts)
    want = jax.tree.map(lambda *gs: sum(c / total * g for c, g in zip(counts, gs)), *[g for _, _, g in parts])
    np.testing.assert_allclose(acc[0], want_loss, rtol=1e-5)
    assert acc[1][count] == pytest.approx(total)
    _close(acc[2], want)


def test_siglip2_runs_every_term_under_gradcache(data_dir):
    """SigLIP 2 with LocCa, SILC and TIPS all on: the GradCache gradient equals plain autodiff of the sigmoid loss on
    every micro-batch's embeddings plus the mean of their local terms, with the bias b, the decoder and the
    self-distillation head all receiving gradient (the old GradCache dropped all three)."""
    setup = _setup("experiments/emoji_siglip2.py:size=test", "loss.distill_start=0.0")
    obj = setup.objective
    batch = {k: v for k, v in _real_batch(setup).items()}
    state = setup.init_state(jax.random.key(0))
    rng = jax.random.key(1)
    loss, metrics, grads = _grads(setup, state.params, state.extra, batch, rng, 2)
    with setup.context():
        micro = split_microbatches({k: jnp.asarray(v) for k, v in batch.items() if k != "concept"}, 2)
        keys = [jax.random.fold_in(rng, i) for i in range(2)]
        norm = {"locca_tokens": sum(obj.normalizers(jax.tree.map(lambda x: x[i], micro), keys[i])["locca_tokens"]
                                    for i in range(2)) / 2}

        def reference(p):
            outs = [obj._towers(p, state.extra, jax.tree.map(lambda x: x[i], micro), keys[i], True, norm)
                    for i in range(2)]
            zimg = jnp.concatenate([o.zimg[None] for o in outs]).transpose(1, 0, 2).reshape(B, -1)
            ztxt = jnp.concatenate([o.ztxt[None] for o in outs]).transpose(1, 0, 2).reshape(B, -1)
            contrastive, _ = obj._contrastive(zimg, ztxt, outs[0].t, outs[0].b, batch.get("concept"))
            return contrastive + sum(o.local for o in outs) / 2

        want_loss, want = jax.jit(jax.value_and_grad(reference))(state.params)
    assert "b" in grads and abs(float(grads["b"])) > 0
    np.testing.assert_allclose(loss, float(want_loss), rtol=1e-5)
    _close(grads, jax.device_get(want), rtol=5e-4, atol=1e-6)
    for part in ("decoder", "distill_head"):
        assert any(float(np.abs(g).max()) > 0 for g in jax.tree.leaves(grads[part])), part
    assert metrics["distill_active"] == 1.0 and metrics["locca_tokens"] > 0
