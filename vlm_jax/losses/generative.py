"""Token-level losses for generative objectives (captioning, prefix-LM): masked cross-entropy and sequence scores."""
from __future__ import annotations

import jax
import jax.numpy as jnp

Metrics = dict[str, jax.Array]


def shift_right(tokens: jax.Array, bos_id: int) -> jax.Array:
    """Decoder inputs for teacher forcing: [bos, t0, …, t_{L-2}] for targets [t0, …, t_{L-1}]."""
    bos = jnp.full(tokens.shape[:-1] + (1,), bos_id, tokens.dtype)
    return jnp.concatenate([bos, tokens[..., :-1]], axis=-1)


def token_log_probs(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """log p(target) per position, float32 [B, L], from logits [B, L, V]."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(logp, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]


def sequence_log_likelihood(logits: jax.Array, targets: jax.Array, mask: jax.Array) -> jax.Array:
    """Σ log p(target) over the masked positions of each sequence, [B] (the scoring classifier's score)."""
    return jnp.sum(token_log_probs(logits, targets) * mask.astype(jnp.float32), axis=-1)


@jax.jit
def token_cross_entropy(logits: jax.Array, targets: jax.Array, mask: jax.Array, label_smoothing: float = 0.0,
                        count: jax.Array | None = None) -> tuple[jax.Array, Metrics]:
    """Mean cross-entropy over the tokens where `mask` is true (loss on targets only), with label smoothing ε:
    the target distribution is (1−ε)·onehot + ε/V. Metrics: nll (unsmoothed, per token), token accuracy, count.

    `count`: what the sums divide by (default: the masked tokens here); inside an accumulated step, the whole
    batch's count per micro-batch, so that the micro-batches' mean is the big batch's."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    m = mask.astype(jnp.float32)
    count = jnp.maximum(jnp.sum(m), 1.0) if count is None else count
    nll = -jnp.take_along_axis(logp, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    per_token = (1.0 - label_smoothing) * nll - label_smoothing * jnp.mean(logp, axis=-1)
    loss = jnp.sum(per_token * m) / count
    correct = (jnp.argmax(logp, axis=-1) == targets).astype(jnp.float32)
    metrics = {"nll": jnp.sum(nll * m) / count, "token_accuracy": jnp.sum(correct * m) / count,
               "tokens": jnp.sum(m)}
    return loss, jax.lax.stop_gradient(metrics)
