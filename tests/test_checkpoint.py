"""Checkpoints: newest readable one wins, a corrupt latest falls back, all-corrupt is a clear error."""
import jax
import numpy as np
import pytest

from vlm_jax.config import apply_overrides, load_config
from vlm_jax.train.checkpoint import CheckpointError, Checkpointer
from vlm_jax.train.trainer import Setup, finalize_config


@pytest.fixture(scope="module")
def setup(data_dir):
    c = finalize_config(load_config("experiments/emoji_two_tower.py:size=test"))
    return Setup(apply_overrides(c, ["mesh=[('data', 1)]", "batch_size=8"]))


def _abstract(setup):
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        jax.eval_shape(setup.init_state, jax.random.key(0)), setup.state_shardings)


def _save_two(setup, directory):
    ckpt = Checkpointer(directory, every_steps=1, async_save=False)
    states = {s: setup.init_state(jax.random.key(s)) for s in (1, 2)}
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
        _abstract(setup), iter(setup.objective.train_data(8, 0, 0, 1)))


def test_latest_restores(setup, tmp_path):
    states = _save_two(setup, tmp_path)
    state, meta = _restore(setup, tmp_path)
    assert meta["step"] == 2
    np.testing.assert_array_equal(jax.tree.leaves(state.params)[0], jax.tree.leaves(states[2].params)[0])


def test_corrupt_latest_falls_back(setup, tmp_path):
    states = _save_two(setup, tmp_path)
    _corrupt(tmp_path / "2")
    state, meta = _restore(setup, tmp_path)
    assert meta["step"] == 1
    same = jax.tree.map(lambda a, b: np.array_equal(np.asarray(a), np.asarray(b)), state.params, states[1].params)
    assert all(jax.tree.leaves(same))


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
