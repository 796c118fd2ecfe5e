"""GradCache: the sub-batched gradient equals the one-shot big-batch gradient (CLIP and SigLIP)."""
import jax
import numpy as np
import pytest

from vlm_jax import sharding as shd
from vlm_jax.config import apply_overrides, load_config
from vlm_jax.train.trainer import Setup, finalize_config


@pytest.mark.parametrize("loss", ["clip", "siglip"])
def test_grad_cache_equals_full_batch_gradient(loss, data_dir):
    base = finalize_config(load_config(f"experiments/emoji_two_tower.py:size=test,loss={loss}"))
    base = apply_overrides(base, ["batch_size=32", "mesh=[('data', 8)]"])
    setup = Setup(base)
    cached = Setup(apply_overrides(base, ["loss.grad_cache=4"])).objective
    rng = np.random.default_rng(0)
    s, l = setup.objective.data.image_size, setup.objective.data.text_len
    batch = shd.global_batch({"image": rng.uniform(-1, 1, (32, s, s, 3)).astype(np.float32),
                              "text": rng.integers(3, 200, (32, l)).astype(np.int32)}, setup.batch_sharding)
    state = setup.init_state(jax.random.key(0))
    key = jax.random.key(1)
    with setup.context():
        (want_loss, (want_m, _)), want = jax.jit(setup.objective.value_and_grad)(state.params, {}, batch, key)
        (got_loss, (got_m, _)), got = jax.jit(cached.value_and_grad)(state.params, {}, batch, key)
    np.testing.assert_allclose(got_loss, want_loss, rtol=1e-6)
    for k in want_m:
        np.testing.assert_allclose(got_m[k], want_m[k], rtol=1e-5, atol=1e-6)
    flat_want = dict(jax.tree_util.tree_leaves_with_path(want))
    for path, g in jax.tree_util.tree_leaves_with_path(got):
        np.testing.assert_allclose(g, flat_want[path], rtol=1e-4, atol=1e-6, err_msg=jax.tree_util.keystr(path))
    assert any(float(np.abs(g).max()) > 1e-3 for g in jax.tree.leaves(got))  # gradients are not trivially zero
