"""Data-parallel, FSDP and tensor-parallel runs equal a 1-device run; checkpoints restore across meshes."""
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from vlm_jax import sharding as shd
from vlm_jax.config import apply_overrides, load_config
from vlm_jax.train.checkpoint import Checkpointer
from vlm_jax.train.optim import path_str
from vlm_jax.train.trainer import Setup, finalize_config

MESHES = {
    "single": [("data", 1)],
    "dp8": [("data", 8)],
    "fsdp8": [("fsdp", 8)],
    "dp4_tp2": [("data", 4), ("tensor", 2)],
    "dp2_fsdp2_tp2": [("data", 2), ("fsdp", 2), ("tensor", 2)],
}
TINY = ["model.image.num_heads=4", "model.text.num_heads=4", "model.image.mlp_dim=64", "model.text.mlp_dim=64",
        "batch_size=16", "fsdp_min_size=0", "optim.warmup_steps=1", "optim.name=sgd", "optim.momentum=0.9",
        "optim.lr=0.1"]  # SGD: Adam would amplify float round-off in zero-gradient params (e.g. key biases)


def _setup(mesh, loss="clip"):
    c = finalize_config(load_config(f"experiments/emoji_two_tower.py:size=test,loss={loss}"))
    return Setup(apply_overrides(c, TINY + [f"mesh={mesh!r}"]))


def _batches(setup, n=3):
    rng = np.random.default_rng(0)
    s, l = setup.objective.data.image_size, setup.objective.data.text_len
    return [{"image": rng.uniform(-1, 1, (16, s, s, 3)).astype(np.float32),
             "text": rng.integers(3, setup.objective.data.vocab_size, (16, l)).astype(np.int32)} for _ in range(n)]


def _run(setup, batches):
    state = setup.init_state(jax.random.key(0))
    losses = []
    for b in batches:
        state, m = setup.train_step(state, shd.global_batch(b, setup.batch_sharding))
        losses.append(float(m["loss"]))
    return losses, jax.device_get(state.params), state


@pytest.fixture(scope="module", params=["clip", "siglip"])
def reference(request, data_dir):
    setup = _setup(MESHES["single"], request.param)
    batches = _batches(setup)
    return request.param, batches, _run(setup, batches)


@pytest.mark.parametrize("mesh", ["dp8", "fsdp8", "dp4_tp2", "dp2_fsdp2_tp2"])
def test_sharded_run_equals_single_device(reference, mesh):
    loss, batches, (want_losses, want_params, _) = reference
    setup = _setup(MESHES[mesh], loss)
    losses, params, state = _run(setup, batches)
    np.testing.assert_allclose(losses, want_losses, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), params, want_params)
    specs = {str(x.sharding.spec) for x in jax.tree.leaves(state.params)}
    if "fsdp" in mesh:
        assert any("fsdp" in s for s in specs), specs  # parameters really are split
    if "tp" in mesh:
        assert any("tensor" in s for s in specs), specs


def test_fsdp_shards_optimizer_state_like_params(data_dir):
    setup = _setup(MESHES["fsdp8"])
    state = setup.init_state(jax.random.key(0))
    params = {path_str(p): x.sharding.spec for p, x in jax.tree_util.tree_leaves_with_path(state.params)}
    matched = 0
    for p, x in jax.tree_util.tree_leaves_with_path(state.opt_state):
        name = path_str(p)
        owner = [k for k in params if name.endswith("/" + k)]
        if owner:
            assert x.sharding.spec == params[owner[0]], name
            matched += 1
    assert matched == len(params)  # one momentum buffer per parameter, each sharded like it
    assert sum("fsdp" in str(s) for s in params.values()) > len(params) // 2


def test_checkpoint_restores_under_another_mesh(tmp_path, data_dir):
    src = _setup(MESHES["fsdp8"])
    state = src.init_state(jax.random.key(1))
    data_iter = iter(src.objective.train_data(16, 0, 0, 1))
    ckpt = Checkpointer(tmp_path, every_steps=1, async_save=False)
    ckpt.save(1, state, data_iter, {"step": 1})
    ckpt.close()
    dst = _setup(MESHES["dp4_tp2"])
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            jax.eval_shape(dst.init_state, jax.random.key(0)), dst.state_shardings)
    restored, meta = Checkpointer(tmp_path, every_steps=1).restore_latest(abstract, iter(dst.objective.train_data(16, 0, 0, 1)))
    assert meta["step"] == 1
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                 jax.device_get(restored.params), jax.device_get(state.params))
    specs = {str(x.sharding.spec) for x in jax.tree.leaves(restored.params)}
    assert any("tensor" in s for s in specs) and not any("fsdp" in s for s in specs)


def test_mesh_errors_are_clear():
    with pytest.raises(ValueError, match="needs 16 devices"):
        shd.make_mesh([("data", 16)])
    with pytest.raises(ValueError, match="At most one"):
        shd.make_mesh([("data", -1), ("fsdp", -1)])
    mesh = shd.make_mesh([("data", -1), ("tensor", 2)])
    assert dict(mesh.shape) == {"data": 4, "tensor": 2}
    assert shd.batch_spec(mesh) == P("data")
