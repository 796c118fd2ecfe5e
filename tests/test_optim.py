"""Optimizer chain and schedules against closed-form NumPy references."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vlm_jax.train.defaults import trainer_defaults
from vlm_jax.train.optim import make_optimizer, make_schedule


def _cfg(**kw):
    c = trainer_defaults().optim
    c.update(kw)
    return c


def test_cosine_schedule_formula():
    c = _cfg(lr=2.0, warmup_steps=10, schedule="cosine", end_lr_factor=0.1)
    s = make_schedule(c, 110)
    for step in (0, 4, 9):
        assert float(s(step)) == pytest.approx(2.0 * (step + 1) / 10)
    for step in (10, 35, 60, 110):
        frac = (step - 10) / 100
        assert float(s(step)) == pytest.approx(0.2 + 1.8 * 0.5 * (1 + np.cos(np.pi * frac)), rel=1e-5)


def test_rsqrt_schedule_formula():
    s = make_schedule(_cfg(lr=1.0, warmup_steps=16, schedule="rsqrt"), 1000)
    assert float(s(63)) == pytest.approx(np.sqrt(16 / 64), rel=1e-6)


def test_adamw_step_matches_numpy():
    """One clipped AdamW step with masked weight decay vs the textbook formula."""
    params = {"dense": {"kernel": jnp.array([[1.0, -2.0], [0.5, 3.0]]), "bias": jnp.array([0.1, -0.2])}}
    grads = {"dense": {"kernel": jnp.array([[3.0, 0.0], [-4.0, 0.0]]), "bias": jnp.array([0.0, 0.0])}}
    c = _cfg(lr=0.1, warmup_steps=0, schedule="constant", weight_decay=0.5, clip_norm=1.0, b1=0.9, b2=0.99)
    tx, _ = make_optimizer(c, 10, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    g = np.array([[3.0, 0.0], [-4.0, 0.0]]) / 5.0  # clipped to norm 1
    m, v = 0.1 * g, 0.01 * g ** 2
    mhat, vhat = m / 0.1, v / 0.01
    want_k = np.array([[1.0, -2.0], [0.5, 3.0]])
    want_k = want_k - 0.1 * (mhat / (np.sqrt(vhat) + 1e-8) + 0.5 * want_k)
    np.testing.assert_allclose(new["dense"]["kernel"], want_k, rtol=1e-6)
    np.testing.assert_allclose(new["dense"]["bias"], [0.1, -0.2], rtol=1e-6)  # zero grad, no decay


def test_adam_decays_by_coupled_l2():
    """optim.name="adam": the decay enters the gradient before Adam's scaling (two steps vs NumPy), unlike adamw."""
    theta0, grad = np.array([1.0, -2.0, 0.5]), np.array([0.3, 0.0, -0.1])
    c = dict(lr=0.1, warmup_steps=0, schedule="constant", weight_decay=0.5, clip_norm=0.0, b1=0.9, b2=0.99,
             eps=1e-8, wd_exclude=None)
    out = {}
    for name in ("adam", "adamw"):
        params = {"w": jnp.asarray(theta0, jnp.float32)}
        tx, _ = make_optimizer(_cfg(name=name, **c), 10, params)
        state = tx.init(params)
        for _ in range(2):
            updates, state = tx.update({"w": jnp.asarray(grad, jnp.float32)}, state, params)
            params = optax.apply_updates(params, updates)
        out[name] = np.asarray(params["w"])
    theta, m, v = theta0.copy(), np.zeros(3), np.zeros(3)
    for t in (1, 2):
        g = grad + 0.5 * theta
        m, v = 0.9 * m + 0.1 * g, 0.99 * v + 0.01 * g ** 2
        theta = theta - 0.1 * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.99 ** t)) + 1e-8)
    np.testing.assert_allclose(out["adam"], theta, rtol=1e-5)
    assert np.abs(out["adam"] - out["adamw"]).max() > 1e-2


def test_freeze_and_lr_mults():
    params = {"img": {"w": jnp.ones(3)}, "txt": {"w": jnp.ones(3)}}
    grads = jax.tree.map(jnp.ones_like, params)
    c = _cfg(lr=1.0, warmup_steps=0, schedule="constant", weight_decay=0.0, clip_norm=0.0, name="sgd",
             freeze="^txt/", lr_mults={"^img/": 0.5})
    tx, _ = make_optimizer(c, 10, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates["img"]["w"], -0.5 * np.ones(3))
    np.testing.assert_allclose(updates["txt"]["w"], np.zeros(3))


# Every shipped experiment config, with the loss presets that change the parameter tree (SigLIP adds `b`).
SHIPPED = ["emoji_two_tower.py", "emoji_two_tower.py:loss=siglip", "emoji_clippo.py", "emoji_clippo.py:loss=siglip",
           "two_tower_scale.py", "two_tower_scale.py:variant=So400m/14,loss=siglip", "clippo_scale.py"]


def _expected_decay(path: str) -> bool:
    """Independent rule from the leaf names: decay matrices and embedding tables, nothing else."""
    name = path.split("/")[-1]
    if path in ("t", "b") or name.endswith("bias") or name in ("scale", "pos_embedding", "probe", "cls"):
        return False
    assert name.endswith("kernel") or name == "embedding", f"unclassified parameter {path}"
    return True


@pytest.mark.parametrize("spec", SHIPPED)
def test_weight_decay_mask_on_every_shipped_config(spec, data_dir):
    from vlm_jax.config import load_config
    from vlm_jax.train.optim import path_str, weight_decay_mask
    from vlm_jax.train.trainer import Setup, finalize_config

    config = finalize_config(load_config(f"experiments/{spec}"))
    assert config.optim.weight_decay > 0
    setup = Setup(config)
    params = setup.abstract_state().params
    mask = weight_decay_mask(params, config.optim)
    got = {path_str(p): m for p, m in jax.tree_util.tree_leaves_with_path(mask)}
    want = {path: _expected_decay(path) for path in got}
    assert got == want
    assert got["t"] is False and got.get("b", False) is False
    assert any(want.values()) and not all(want.values())


def test_real_chain_decays_exactly_the_masked_parameters(data_dir):
    """Zero gradients: the AdamW update is lr × wd × param where decay applies, and exactly 0 elsewhere."""
    from vlm_jax.config import load_config
    from vlm_jax.train.optim import path_str, weight_decay_mask
    from vlm_jax.train.trainer import Setup, finalize_config

    config = finalize_config(load_config("experiments/emoji_two_tower.py:size=test,loss=siglip"))
    setup = Setup(config)
    params = jax.tree.map(lambda s: jnp.ones(s.shape, s.dtype), setup.abstract_state().params)
    updates, _ = setup.tx.update(jax.tree.map(jnp.zeros_like, params), setup.tx.init(params), params)
    mask = weight_decay_mask(params, config.optim)
    lr0 = float(setup.schedule(0))
    for (p, u), m in zip(jax.tree_util.tree_leaves_with_path(updates), jax.tree.leaves(mask)):
        want = -lr0 * config.optim.weight_decay if m else 0.0
        np.testing.assert_allclose(np.asarray(u), want, rtol=1e-6, err_msg=path_str(p))


def test_unknown_optimizer_names_valid():
    with pytest.raises(ValueError, match="adamw"):
        make_optimizer(_cfg(name="adamm"), 10, {"w": jnp.ones(2)})
