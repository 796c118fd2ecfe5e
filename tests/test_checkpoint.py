"""Checkpoints: newest readable one wins, a corrupt latest falls back, all-corrupt is a clear error."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlm_jax.config import apply_overrides, load_config
from vlm_jax.objectives.contrastive import ContrastiveObjective
from vlm_jax.train.checkpoint import CheckpointError, Checkpointer
from vlm_jax.train.objective import register
from vlm_jax.train.trainer import Setup, finalize_config


@register("contrastive_with_extra_for_checkpoint_tests")
class _ContrastiveWithExtra(ContrastiveObjective):
    """CLIP plus a non-empty `extra` (a float queue and an int counter), so its restore is checked as well."""

    def init_extra(self, params):
        return {"queue": jnp.zeros((4, 32), jnp.float32), "count": jnp.zeros((3,), jnp.int32)}


@pytest.fixture(scope="module")
def setup(data_dir):
    c = load_config("experiments/emoji_two_tower.py:size=test")
    c.objective = "contrastive_with_extra_for_checkpoint_tests"
    return Setup(apply_overrides(finalize_config(c), ["mesh=[('data', 1)]", "batch_size=8"]))


def _distinct(state, seed):
    """`state` with every leaf of params, opt_state and extra, the step and the rng replaced by values drawn
    from `seed` (same shapes, dtypes and shardings): at init opt_state is all zeros and step 0, which a restore
    that dropped them would reproduce."""
    def fill(tree, part):
        def leaf(i, x):
            rng = np.random.default_rng([seed, part, i])
            v = rng.normal(size=x.shape) if jnp.issubdtype(x.dtype, jnp.floating) else rng.integers(1, 2**20, x.shape)
            return jax.device_put(np.asarray(v, x.dtype), x.sharding)
        leaves, treedef = jax.tree.flatten(tree)
        return jax.tree.unflatten(treedef, [leaf(i, x) for i, x in enumerate(leaves)])

    return state.replace(params=fill(state.params, 0), opt_state=fill(state.opt_state, 1),
                         extra=fill(state.extra, 2), step=jax.device_put(jnp.int32(1000 + seed), state.step.sharding),
                         rng=jax.device_put(jax.random.key(5000 + seed), state.rng.sharding))


def _parts(state):
    """(name, array) for every leaf of the state, the rng as its raw key data."""
    out = [("step", state.step), ("rng", jax.random.key_data(state.rng))]
    for part in ("params", "opt_state", "extra"):
        out += [(part + jax.tree_util.keystr(path), x)
                for path, x in jax.tree_util.tree_leaves_with_path(getattr(state, part))]
    return out


def _assert_bit_equal(state, want):
    """Same tree structure and, leaf by leaf, same dtype, shape and bytes (params, opt_state, extra, step, rng)."""
    for part in ("params", "opt_state", "extra"):
        assert jax.tree.structure(getattr(state, part)) == jax.tree.structure(getattr(want, part)), part
    assert jax.random.key_impl(state.rng) == jax.random.key_impl(want.rng)
    got, exp = _parts(state), _parts(want)
    assert [name for name, _ in got] == [name for name, _ in exp]
    for (name, a), (_, b) in zip(got, exp):
        a, b = np.asarray(a), np.asarray(b)
        assert a.dtype == b.dtype and a.shape == b.shape, name
        np.testing.assert_array_equal(a, b, err_msg=name)
        assert a.tobytes() == b.tobytes(), name  # bit-exact (also tells -0.0 from 0.0)


def _save_two(setup, directory):
    ckpt = Checkpointer(directory, every_steps=1, async_save=False)
    states = {s: _distinct(setup.init_state(jax.random.key(s)), s) for s in (1, 2)}
    for (name, a), (_, b) in zip(_parts(states[1]), _parts(states[2])):
        assert not np.array_equal(a, b), name  # every leaf tells the two checkpoints apart
    for s, state in states.items():
        ckpt.save(s, state, iter(setup.objective.train_data(8, 0, 0, 1)), {"step": s})
    ckpt.close()
    return states


def _corrupt(step_dir):
    for f in step_dir.rglob("*"):
        if f.is_file() and "state" in f.parts:
            f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 3])


def _restore(setup, directory):
    return Checkpointer(directory, every_steps=1).restore_latest(
        setup.abstract_state(), iter(setup.objective.train_data(8, 0, 0, 1)))


def test_latest_restores(setup, tmp_path):
    states = _save_two(setup, tmp_path)
    state, meta = _restore(setup, tmp_path)
    assert meta["step"] == 2
    _assert_bit_equal(state, states[2])


def test_corrupt_latest_falls_back(setup, tmp_path):
    states = _save_two(setup, tmp_path)
    _corrupt(tmp_path / "2")
    state, meta = _restore(setup, tmp_path)
    assert meta["step"] == 1
    _assert_bit_equal(state, states[1])


def test_all_corrupt_is_an_error(setup, tmp_path):
    _save_two(setup, tmp_path)
    _corrupt(tmp_path / "1")
    _corrupt(tmp_path / "2")
    with pytest.raises(CheckpointError, match="All 2 checkpoints"):
        _restore(setup, tmp_path)


def test_empty_directory_starts_fresh(setup, tmp_path):
    assert _restore(setup, tmp_path) is None


def test_keeps_last_n_and_every_kth(setup, tmp_path):
    ckpt = Checkpointer(tmp_path, every_steps=1, keep=2, keep_period=4, async_save=False)
    state = setup.init_state(jax.random.key(0))
    data = iter(setup.objective.train_data(8, 0, 0, 1))
    for s in range(1, 11):
        ckpt.save(s, state, data, {"step": s})
    ckpt.close()
    assert Checkpointer(tmp_path, every_steps=1).steps() == [4, 8, 9, 10]
