"""Helpers shared by the tests that compare runs: a few train steps from a fixed init, float64 cross-entropy."""
import jax
import numpy as np

from vlm_jax import sharding as shd


def run_steps(setup, batches):
    """(losses, params on the host, final state) after one train step per batch from the seed-0 init."""
    state = setup.init_state(jax.random.key(0))
    losses = []
    for b in batches:
        state, m = setup.train_step(state, shd.global_batch(b, setup.batch_sharding))
        losses.append(float(m["loss"]))
    return losses, jax.device_get(state.params), state


def np_cross_entropy(logits, targets, mask):
    """Mean token cross-entropy over `mask` in float64 NumPy."""
    x = np.asarray(logits, np.float64)
    logp = x - x.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, np.asarray(targets)[..., None], -1)[..., 0]
    return (nll * mask).sum() / mask.sum()


def random_pairs(setup, n, batch=16):
    """`n` seeded batches of random images in [-1, 1] and token ids for a two-tower setup."""
    rng = np.random.default_rng(0)
    s, length = setup.objective.data.image_size, setup.objective.data.text_len
    return [{"image": rng.uniform(-1, 1, (batch, s, s, 3)).astype(np.float32),
             "text": rng.integers(3, setup.objective.data.vocab_size, (batch, length)).astype(np.int32)}
            for _ in range(n)]
