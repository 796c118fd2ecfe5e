"""Data-parallel, FSDP and tensor-parallel runs equal a 1-device run; checkpoints restore across meshes."""
import logging

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from steps import random_pairs, run_steps as _run
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
EXTRA = {  # runs that differ by more than the mesh: (mesh, overrides, losses checked)
    "fsdp8_rules": ("fsdp8", ["fsdp_dims=rules"], ("clip",)),
    "2slices_dp2_fsdp2": ([("data", 2), ("fsdp", 2)], ["dcn_mesh=[('data', 2)]"], ("clip",)),
    "dp8_ring_loss": ("dp8", ["loss.impl=ring"], ("clip", "siglip")),
    "dp2_fsdp2_tp2_gather_loss": ("dp2_fsdp2_tp2", ["loss.impl=gather", "loss.chunk_size=2"], ("clip", "siglip")),
}
TINY = ["model.image.num_heads=4", "model.text.num_heads=4", "model.image.mlp_dim=64", "model.text.mlp_dim=64",
        "batch_size=16", "fsdp_min_size=0", "optim.warmup_steps=1", "optim.name=sgd", "optim.momentum=0.9",
        "optim.lr=0.1"]  # SGD: Adam would amplify float round-off in zero-gradient params (e.g. key biases)


def _setup(mesh, loss="clip"):
    mesh, more, _ = EXTRA.get(mesh, (mesh, [], ()))
    mesh = MESHES[mesh] if isinstance(mesh, str) else mesh
    c = finalize_config(load_config(f"experiments/emoji_two_tower.py:size=test,loss={loss}"))
    return Setup(apply_overrides(c, TINY + [f"mesh={mesh!r}"] + more))


def _batches(setup, n=3):
    return random_pairs(setup, n)


@pytest.fixture(scope="module", params=["clip", "siglip"])
def reference(request, data_dir):
    setup = _setup("single", request.param)
    batches = _batches(setup)
    return request.param, batches, _run(setup, batches)


@pytest.mark.parametrize("mesh", ["dp8", "fsdp8", "dp4_tp2", "dp2_fsdp2_tp2", *EXTRA])
def test_sharded_run_equals_single_device(reference, mesh):
    loss, batches, (want_losses, want_params, _) = reference
    if mesh in EXTRA and loss not in EXTRA[mesh][2]:
        pytest.skip("mesh-construction variants are checked with one loss")
    if loss == "siglip" and mesh in ("dp8", "fsdp8", "dp4_tp2"):
        pytest.skip("the loss does not change how these meshes split the towers; SigLIP is checked on the mixed "
                    "mesh and with its own ring / gather collectives")
    setup = _setup(mesh, loss)
    losses, params, state = _run(setup, batches)
    np.testing.assert_allclose(losses, want_losses, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), params, want_params)
    specs = {str(x.sharding.spec) for x in jax.tree.leaves(state.params)}
    if "fsdp" in mesh:
        assert any("fsdp" in s for s in specs), specs  # parameters really are split
    if "tp" in mesh:
        assert any("tensor" in s for s in specs), specs
    if mesh.endswith("_loss"):  # the distributed kernel ran, not the full-loss fallback
        assert "shard_map" in str(setup.train_step.jaxpr())


def test_fsdp_shards_optimizer_state_like_params(data_dir):
    setup = _setup("fsdp8")
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
    src = _setup("fsdp8")
    state = src.init_state(jax.random.key(1))
    data_iter = iter(src.objective.train_data(16, 0, 0, 1))
    ckpt = Checkpointer(tmp_path, every_steps=1, async_save=False)
    ckpt.save(1, state, data_iter, {"step": 1})
    ckpt.close()
    dst = _setup("dp4_tp2")
    restored, meta = Checkpointer(tmp_path, every_steps=1).restore_latest(
        dst.abstract_state(), iter(dst.objective.train_data(16, 0, 0, 1)))
    assert meta["step"] == 1
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                 jax.device_get(restored.params), jax.device_get(state.params))
    specs = {str(x.sharding.spec) for x in jax.tree.leaves(restored.params)}
    assert any("tensor" in s for s in specs) and not any("fsdp" in s for s in specs)


def test_smaller_mesh_warns_about_idle_devices(caplog):
    with caplog.at_level(logging.WARNING, logger="vlm_jax.sharding"):
        mesh = shd.make_mesh([("data", 4), ("tensor", 1)])
    assert mesh.size == 4 and "uses 4 of the 8 devices" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="vlm_jax.sharding"):
        shd.make_mesh([("data", -1)])
    assert not caplog.text


def test_mesh_errors_are_clear():
    with pytest.raises(ValueError, match="needs 16 devices"):
        shd.make_mesh([("data", 16)])
    with pytest.raises(ValueError, match="At most one"):
        shd.make_mesh([("data", -1), ("fsdp", -1)])
    mesh = shd.make_mesh([("data", -1), ("tensor", 2)])
    assert dict(mesh.shape) == {"data": 4, "tensor": 2}
    assert shd.batch_spec(mesh) == P("data")


def test_fsdp_goes_on_largest_free_divisible_dim():
    mesh = shd.make_mesh([("fsdp", 4), ("tensor", 2)])
    assert shd.fsdp_on_largest(P("fsdp", "tensor"), (64, 128), mesh) == P("fsdp", "tensor")  # 128 is taken
    assert shd.fsdp_on_largest(P("fsdp", None), (64, 128), mesh) == P(None, "fsdp")
    assert shd.fsdp_on_largest(P(None, None, "tensor"), (2, 256, 6), mesh) == P(None, "fsdp", "tensor")
    assert shd.fsdp_on_largest(P("fsdp"), (6,), mesh) == P(None)  # nothing divisible: replicated
    two = shd.make_mesh([("data", 2), ("fsdp", 4)])
    assert shd.fsdp_on_largest(P(("data", "fsdp")), (8, 16), two) == P("data", "fsdp")  # keeps the other axis
    abstract = {"w": jax.ShapeDtypeStruct((64, 1024), np.float32), "small": jax.ShapeDtypeStruct((64,), np.float32)}
    specs = jax.tree.map(lambda s: s.spec, shd.tree_shardings(abstract, mesh, min_size=1000))
    assert specs == {"w": P(None, "fsdp"), "small": P()}


def test_multislice_mesh_keeps_slices_contiguous():
    mesh = shd.make_mesh([("data", -1), ("fsdp", 2)], dcn=[("data", 2)])
    assert dict(mesh.shape) == {"data": 4, "fsdp": 2}
    ids = np.vectorize(lambda d: d.id)(mesh.devices)
    assert set(ids[:2].ravel()) == {0, 1, 2, 3} and set(ids[2:].ravel()) == {4, 5, 6, 7}
    mesh = shd.make_mesh([("data", 2), ("fsdp", -1)], dcn=[("fsdp", 2)])
    ids = np.vectorize(lambda d: d.id)(mesh.devices)
    assert ids.tolist() == [[0, 1, 4, 5], [2, 3, 6, 7]]  # fsdp crosses slices only in its slow half
    with pytest.raises(ValueError, match="not mesh axes"):
        shd.make_mesh([("data", -1)], dcn=[("replica", 2)])
    with pytest.raises(ValueError, match="split into 3 slices"):
        shd.make_mesh([("data", -1)], dcn=[("data", 3)])


def test_two_dim_fsdp_placement():
    """fsdp=8 split 2 × 4: an array one of whose dims 8 divides stays 1-D over both axes; one no dim of which 8
    divides is split 4 ways on its largest dim divisible by 4 and 2 ways on another; every device holds 1/8."""
    mesh = shd.make_mesh([("data", 1), ("fsdp", -1)], split_fsdp=True)
    assert dict(mesh.shape) == {"data": 1, "fsdp": 2, "fsdp2": 4}
    assert shd.fsdp_factors(512) == (16, 32) and shd.fsdp_factors(7) == (1, 7)
    assert shd.fsdp_on_largest(P(None, None), (16, 3), mesh) == P(("fsdp", "fsdp2"), None)
    assert shd.fsdp_on_largest(P(None, None), (6, 12), mesh) == P("fsdp", "fsdp2")
    assert shd.fsdp_on_largest(P(None, None, None), (12, 4, 3), mesh) == P("fsdp2", "fsdp", None)
    assert shd.fsdp_on_largest(P(None), (6,), mesh) == P("fsdp")  # only 2 divides: half the split
    abstract = {"w": jax.ShapeDtypeStruct((6, 12), np.float32), "v": jax.ShapeDtypeStruct((16, 3), np.float32)}
    shardings = shd.tree_shardings(abstract, mesh, min_size=0, fsdp="2d")
    for name, leaf in abstract.items():
        shard = shardings[name].shard_shape(leaf.shape)
        assert np.prod(shard) * 8 == np.prod(leaf.shape), (name, shard)
    assert shd.batch_spec(mesh) == P(("fsdp", "fsdp2"))  # the batch spans both fsdp axes
    one_axis = shd.make_mesh([("fsdp", 4), ("data", 2)], split_fsdp=True)
    assert dict(one_axis.shape) == {"fsdp": 2, "fsdp2": 2, "data": 2}


def test_two_dim_fsdp_run_equals_single_device(data_dir):
    """Width 12 (no dim of most kernels divides 8): fsdp_dims=2d on 8 devices splits them over two dims and
    trains exactly like one device."""
    narrow = ["model.image.width=12", "model.text.width=12", "model.embed_dim=12", "model.image.mlp_dim=24",
              "model.text.mlp_dim=24"]

    def setup(mesh, more=()):
        c = finalize_config(load_config("experiments/emoji_two_tower.py:size=test,loss=clip"))
        return Setup(apply_overrides(c, TINY + narrow + [f"mesh={mesh!r}", *more]))

    single = setup([("data", 1)])
    batches = _batches(single)
    want_losses, want_params, _ = _run(single, batches)
    split = setup([("data", 1), ("fsdp", 8)], ["fsdp_dims=2d"])
    losses, params, state = _run(split, batches)
    np.testing.assert_allclose(losses, want_losses, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), params, want_params)
    two_dim = [x for x in jax.tree.leaves(state.params)
               if sum(bool(e) for e in x.sharding.spec) == 2 and "fsdp2" in str(x.sharding.spec)]
    assert two_dim, "no parameter is split over two dimensions"
    for x in two_dim:
        assert x.addressable_shards[0].data.size * 8 == x.size
