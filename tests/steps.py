"""Helpers shared by the tests that compare runs: a few train steps from a fixed init, float64 cross-entropy."""
import os

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


def unbox(tree):
    """`tree` with flax's partitioning boxes removed (plain arrays, as the objective's functions take them)."""
    return jax.tree.map(lambda x: x.unbox() if hasattr(x, "unbox") else x, tree, is_leaf=lambda x: hasattr(x, "unbox"))


def family_objective(method: str, **arg):
    """The objective of `experiments/emoji_contrastive_family.py` for `method` at test size (3 steps, batch 16)."""
    from vlm_jax.config import load_config
    from vlm_jax.train.objective import get_objective
    from vlm_jax.train.trainer import finalize_config

    extra = "".join(f",{k}={v}" for k, v in arg.items())
    return get_objective(finalize_config(load_config(
        f"experiments/emoji_contrastive_family.py:method={method},size=test,steps=3,batch=16{extra}")))


def first_batch_and_params(obj, keys=("image", "text")):
    """The objective's first training batch (the `keys` fields, as jax arrays) and parameters initialised on its
    image and text."""
    import jax.numpy as jnp

    first = next(iter(obj.train_data(16, 0, 0, 1)))
    batch = {k: jnp.asarray(first[k]) for k in keys}
    params = obj.model().init({"params": jax.random.key(0), "dropout": jax.random.key(1)},
                              **{k: batch[k][:2] for k in ("image", "text")})["params"]
    return batch, unbox(params)


def big_batch_and_gradcache(obj, params, extra, batch, rng, micro: int = 2):
    """value_and_grad of the whole batch and of `micro` GradCache micro-batches (compiled: faster than op by op),
    asserted equal; returns (loss, metrics, gradients) of the whole batch."""
    step = jax.jit(obj.value_and_grad, static_argnums=4)
    (big, (metrics, _)), g_big = step(params, extra, batch, rng, 1)
    (acc, _), g_acc = step(params, extra, batch, rng, micro)
    np.testing.assert_allclose(float(acc), float(big), rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6), g_acc, g_big)
    return big, metrics, g_big


def cli_env(cache_dir) -> dict:
    """The environment for a test's CLI runs of one-device configs: the process sees one CPU device (not the suite's
    simulated eight) and shares a persistent compilation cache in `cache_dir` with the test's other runs, so later
    runs load what the first compiled (one-device executables only: loading cached multi-device CPU executables is
    what aborted, tests/conftest.py)."""
    flags = os.environ.get("XLA_FLAGS", "").replace("--xla_force_host_platform_device_count=8", "").strip()
    return dict(os.environ, XLA_FLAGS=flags, JAX_COMPILATION_CACHE_DIR=str(cache_dir),
                JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")


def brute_force_greedy(last_logits, seq, steps: int, ids) -> list[int]:
    """Greedy tokens after `seq` from the whole sequence's forward pass again at every step (`last_logits(tokens
    [1, n]) → logits of the last position`), stopping at EOS and padded to `steps`: the reference for cached
    decoding."""
    seq, out = list(seq), []
    for _ in range(steps):
        nxt = int(np.argmax(np.asarray(last_logits(np.asarray([seq], np.int32)))))
        out.append(nxt)
        if nxt == ids["eos"]:
            break
        seq.append(nxt)
    return out + [ids["pad"]] * (steps - len(out))
