"""Contrastive losses vs an independent float64 NumPy implementation: values and gradients."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlm_jax.losses import infonce_loss, sigmoid_loss


def _lse(x, axis):
    m = x.max(axis=axis, keepdims=True)
    return (m + np.log(np.exp(x - m).sum(axis=axis, keepdims=True))).squeeze(axis)


def _softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def np_infonce(x, y, t):
    """Value and analytic gradients (x, y, t) of the symmetric InfoNCE loss, float64."""
    sim = x @ y.T
    s = t * sim
    n = len(x)
    loss = 0.5 * (np.mean(_lse(s, 1) - np.diag(s)) + np.mean(_lse(s, 0) - np.diag(s)))
    ds = 0.5 / n * (_softmax(s, 1) - np.eye(n)) + 0.5 / n * (_softmax(s, 0) - np.eye(n))
    return loss, t * ds @ y, t * ds.T @ x, np.sum(ds * sim)


def np_sigmoid(x, y, t, b):
    """Value and analytic gradients (x, y, t, b) of the SigLIP loss, float64."""
    sim = x @ y.T
    s = t * sim + b
    n = len(x)
    z = 2 * np.eye(n) - 1
    loss = np.sum(np.log1p(np.exp(-z * s))) / n
    ds = -z / (1 + np.exp(z * s)) / n
    return loss, t * ds @ y, t * ds.T @ x, np.sum(ds * sim), np.sum(ds)


def _unit(rng, n, d):
    v = rng.normal(size=(n, d))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_reference_gradients_match_finite_differences():
    """The NumPy reference itself is checked by central differences."""
    rng = np.random.default_rng(0)
    x, y = _unit(rng, 5, 3), _unit(rng, 5, 3)
    eps = 1e-6
    for fn, extra in ((np_infonce, (3.0,)), (np_sigmoid, (3.0, -2.0))):
        out = fn(x, y, *extra)
        dx = np.zeros_like(x)
        for i in np.ndindex(x.shape):
            xp, xm = x.copy(), x.copy()
            xp[i] += eps
            xm[i] -= eps
            dx[i] = (fn(xp, y, *extra)[0] - fn(xm, y, *extra)[0]) / (2 * eps)
        np.testing.assert_allclose(out[1], dx, rtol=1e-5, atol=1e-8)
        dt = (fn(x, y, extra[0] + eps, *extra[1:])[0] - fn(x, y, extra[0] - eps, *extra[1:])[0]) / (2 * eps)
        np.testing.assert_allclose(out[3], dt, rtol=1e-5)


@pytest.mark.parametrize("n,d,t", [(8, 16, 1 / 0.07), (33, 4, 10.0), (2, 64, 1.0)])
def test_infonce_matches_reference(n, d, t):
    rng = np.random.default_rng(n)
    x, y = _unit(rng, n, d), _unit(rng, n, d)
    want, gx, gy, gt = np_infonce(x, y, t)
    f = lambda a, b, s: infonce_loss(a, b, s)[0]  # noqa: E731
    got, grads = jax.value_and_grad(f, argnums=(0, 1, 2))(jnp.float32(x), jnp.float32(y), jnp.float32(t))
    np.testing.assert_allclose(got, want, rtol=2e-5)
    for g, w in zip(grads, (gx, gy, gt)):
        np.testing.assert_allclose(g, w, rtol=2e-4, atol=2e-6)


@pytest.mark.parametrize("n,d,t,b", [(8, 16, 10.0, -10.0), (33, 4, 3.0, 0.5), (2, 64, 1.0, -1.0)])
def test_sigmoid_matches_reference(n, d, t, b):
    rng = np.random.default_rng(100 + n)
    x, y = _unit(rng, n, d), _unit(rng, n, d)
    want, gx, gy, gt, gb = np_sigmoid(x, y, t, b)
    f = lambda a, c, s, bb: sigmoid_loss(a, c, s, bb)[0]  # noqa: E731
    got, grads = jax.value_and_grad(f, argnums=(0, 1, 2, 3))(
        jnp.float32(x), jnp.float32(y), jnp.float32(t), jnp.float32(b))
    np.testing.assert_allclose(got, want, rtol=2e-5)
    for g, w in zip(grads, (gx, gy, gt, gb)):
        np.testing.assert_allclose(g, w, rtol=2e-4, atol=2e-6)


def test_accuracy_metrics_count_diagonal_matches():
    x = np.eye(4, dtype=np.float32)
    y = x[[0, 1, 3, 2]]  # pairs 2 and 3 swapped
    _, m = infonce_loss(x, y, 10.0)
    assert float(m["acc/i2t"]) == pytest.approx(0.5) and float(m["acc/t2i"]) == pytest.approx(0.5)
    _, m = sigmoid_loss(x, x, 10.0, -5.0)
    assert float(m["acc/i2t"]) == 1.0
    assert float(m["logit/pos"]) == pytest.approx(5.0) and float(m["logit/neg"]) == pytest.approx(-5.0)
