"""UniCL (image–text–label contrastive): equals CLIP's InfoNCE when labels are unique, a float64 NumPy reference
with shared labels (value and gradients), and the objective feeds it the batch's concept labels."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlm_jax.config import apply_overrides, load_config
from vlm_jax.losses.contrastive import infonce_loss, unicl_loss
from vlm_jax.train.trainer import Setup, finalize_config


def _reference(zimg: np.ndarray, ztxt: np.ndarray, t: float, labels: np.ndarray) -> float:
    """Float64 loops: each image's (text's) loss is −mean over same-label texts (images) of log-softmax."""
    logits = t * zimg.astype(np.float64) @ ztxt.astype(np.float64).T
    n = len(labels)
    total = 0.0
    for axis_logits in (logits, logits.T):
        for i in range(n):
            row = axis_logits[i]
            logp = row - (row.max() + np.log(np.exp(row - row.max()).sum()))
            positives = [j for j in range(n) if labels[j] == labels[i]]
            total -= np.mean([logp[j] for j in positives]) / n
    return total / 2


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_unique_labels_give_infonce():
    rng = np.random.default_rng(0)
    zi, zt = _unit(rng.normal(size=(12, 8))), _unit(rng.normal(size=(12, 8)))
    args = (jnp.asarray(zi, jnp.float32), jnp.asarray(zt, jnp.float32), jnp.float32(7.0))
    ours, m = unicl_loss(*args, jnp.arange(12))
    clip, mc = infonce_loss(*args)
    np.testing.assert_allclose(ours, clip, rtol=1e-6)
    assert m["acc/i2t"] == mc["acc/i2t"] and m["positives"] == 1.0
    g1 = jax.grad(lambda a, b, t: unicl_loss(a, b, t, jnp.arange(12))[0], argnums=(0, 1, 2))(*args)
    g2 = jax.grad(lambda a, b, t: infonce_loss(a, b, t)[0], argnums=(0, 1, 2))(*args)
    for x, y in zip(g1, g2):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)


def test_shared_labels_match_float64_reference_value_and_gradient():
    rng = np.random.default_rng(1)
    labels = np.array([0, 1, 0, 2, 1, 0, 3, 3])
    zi, zt = _unit(rng.normal(size=(8, 6))), _unit(rng.normal(size=(8, 6)))
    t = 5.0
    ours, m = unicl_loss(jnp.asarray(zi, jnp.float32), jnp.asarray(zt, jnp.float32), jnp.float32(t),
                         jnp.asarray(labels))
    assert float(ours) == pytest.approx(_reference(zi, zt, t, labels), rel=1e-5)
    assert float(m["positives"]) == pytest.approx(np.mean([(labels == l).sum() for l in labels]))
    grad = jax.grad(lambda a: unicl_loss(a, jnp.asarray(zt, jnp.float32), jnp.float32(t),
                                         jnp.asarray(labels))[0])(jnp.asarray(zi, jnp.float32))
    eps = 1e-6  # central differences of the float64 reference
    for i, d in ((0, 0), (2, 3), (7, 5)):
        plus, minus = zi.copy(), zi.copy()
        plus[i, d] += eps
        minus[i, d] -= eps
        fd = (_reference(plus, zt, t, labels) - _reference(minus, zt, t, labels)) / (2 * eps)
        assert float(grad[i, d]) == pytest.approx(fd, rel=1e-3, abs=1e-6)


def test_objective_uses_the_batch_concepts(data_dir):
    config = apply_overrides(finalize_config(load_config("experiments/emoji_two_tower.py:size=test,loss=unicl")),
                             ["mesh=[('data', 1)]", "batch_size=64"])
    setup = Setup(config)
    objective = setup.objective
    batch = next(iter(objective.train_data(64, 0, 0, 1)))
    state = setup.init_state(jax.random.key(0))
    with objective.trace_context():
        loss, (metrics, _) = objective.loss(state.params, state.extra, batch, jax.random.key(1), train=False)
        (zimg, ztxt), aux = objective.model().apply({"params": state.params}, batch["image"], batch["text"],
                                                    train=False)
    want = _reference(np.asarray(zimg), np.asarray(ztxt), float(aux["t"]), np.asarray(batch["concept"]))
    assert float(loss) == pytest.approx(want, rel=1e-4)
    assert float(metrics["positives"]) > 1.0  # this batch holds some concept in two styles
    with pytest.raises(ValueError, match="impl='full'"):
        Setup(apply_overrides(config, ["loss.impl=ring"]))
