"""Masked token cross-entropy and sequence scores against float64 NumPy (values and gradients)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlm_jax.losses.generative import sequence_log_likelihood, shift_right, token_cross_entropy

B, L, V = 3, 6, 7


def _data(seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(B, L, V)) * 2
    targets = rng.integers(0, V, (B, L))
    mask = np.ones((B, L), bool)
    mask[0, 4:] = False
    mask[2, 1:] = False
    return logits, targets, mask


def _np_log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_cross_entropy_value_and_gradient_match_numpy(eps):
    logits, targets, mask = _data()
    logp = _np_log_softmax(logits)
    q = (1 - eps) * np.eye(V)[targets] + eps / V  # smoothed target distribution
    n = mask.sum()
    want = -(q * logp).sum(-1)[mask].sum() / n
    want_grad = (np.exp(logp) - q) * mask[..., None] / n  # d/dlogits of the masked mean
    (loss, metrics), grad = jax.value_and_grad(token_cross_entropy, has_aux=True)(
        jnp.asarray(logits, jnp.float32), jnp.asarray(targets), jnp.asarray(mask), eps)
    assert float(loss) == pytest.approx(want, rel=1e-5)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-4, atol=1e-6)
    nll = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
    assert float(metrics["nll"]) == pytest.approx(nll[mask].mean(), rel=1e-5)
    assert float(metrics["tokens"]) == n
    assert float(metrics["token_accuracy"]) == pytest.approx((logits.argmax(-1) == targets)[mask].mean())


def test_masked_positions_do_not_matter():
    logits, targets, mask = _data()
    base, _ = token_cross_entropy(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(mask))
    noisy = np.where(mask[..., None], logits, 100.0 * np.random.default_rng(1).normal(size=logits.shape))
    other = np.where(mask, targets, (targets + 1) % V)
    again, _ = token_cross_entropy(jnp.asarray(noisy), jnp.asarray(other), jnp.asarray(mask))
    assert float(again) == float(base)


def test_sequence_log_likelihood_and_shift_right():
    logits, targets, mask = _data(2)
    logp = _np_log_softmax(logits)
    want = (np.take_along_axis(logp, targets[..., None], -1)[..., 0] * mask).sum(-1)
    np.testing.assert_allclose(sequence_log_likelihood(jnp.asarray(logits), jnp.asarray(targets),
                                                       jnp.asarray(mask)), want, rtol=1e-5)
    np.testing.assert_array_equal(shift_right(jnp.asarray([[5, 6, 7], [8, 9, 2]]), 1), [[1, 5, 6], [1, 8, 9]])
