"""Contrastive losses on L2-normalised embeddings: symmetric InfoNCE (CLIP) and pairwise sigmoid (SigLIP)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

Metrics = dict[str, jax.Array]


def _retrieval_accuracy(logits: jax.Array) -> Metrics:
    """Top-1 accuracy of matching the diagonal, both directions."""
    target = jnp.arange(logits.shape[0])
    i2t = jnp.mean(jnp.argmax(logits, axis=1) == target)
    t2i = jnp.mean(jnp.argmax(logits, axis=0) == target)
    return {"acc/i2t": i2t, "acc/t2i": t2i}


@jax.jit
def infonce_loss(zimg: jax.Array, ztxt: jax.Array, t: jax.Array,
                 label_smoothing: float | jax.Array = 0.0) -> tuple[jax.Array, Metrics]:
    """Symmetric cross-entropy over the B×B similarity matrix scaled by temperature `t`; with `label_smoothing` ε
    each row's target is (1 − ε) on its pair and ε/B on every column (ALIGN uses 0.1)."""
    logits = t * jnp.einsum("id,jd->ij", zimg.astype(jnp.float32), ztxt.astype(jnp.float32))
    return infonce_from_logits(logits, label_smoothing)


def infonce_from_logits(logits: jax.Array, label_smoothing: float | jax.Array = 0.0) -> tuple[jax.Array, Metrics]:
    """Symmetric InfoNCE on a [B, B] logit matrix whose diagonal holds the pairs (see `infonce_loss`)."""
    diag = jnp.diagonal(logits)
    eps = jnp.asarray(label_smoothing, jnp.float32)
    loss_i2t = jnp.mean(jax.nn.logsumexp(logits, axis=1) - (1 - eps) * diag - eps * jnp.mean(logits, axis=1))
    loss_t2i = jnp.mean(jax.nn.logsumexp(logits, axis=0) - (1 - eps) * diag - eps * jnp.mean(logits, axis=0))
    loss = 0.5 * (loss_i2t + loss_t2i)
    return loss, {"loss/i2t": loss_i2t, "loss/t2i": loss_t2i, **_retrieval_accuracy(logits)}


@jax.jit
def sigmoid_loss(zimg: jax.Array, ztxt: jax.Array, t: jax.Array, b: jax.Array) -> tuple[jax.Array, Metrics]:
    """SigLIP: −Σ_ij log σ(±(t·x_i·y_j + b)) / B, positives on the diagonal."""
    logits = t * jnp.einsum("id,jd->ij", zimg.astype(jnp.float32), ztxt.astype(jnp.float32)) + b
    return sigmoid_from_logits(logits)


def sigmoid_from_logits(logits: jax.Array) -> tuple[jax.Array, Metrics]:
    """SigLIP's loss on a [B, B] logit matrix (bias included) whose diagonal holds the pairs."""
    n = logits.shape[0]
    signs = 2.0 * jnp.eye(n, dtype=logits.dtype) - 1.0
    loss = -jnp.sum(jax.nn.log_sigmoid(signs * logits)) / n
    pos = jnp.sum(jnp.diagonal(logits)) / n
    neg = (jnp.sum(logits) - n * pos) / float(max(n * (n - 1), 1))  # a Python float: n² overflows int32
    return loss, {"logit/pos": pos, "logit/neg": neg, **_retrieval_accuracy(logits)}


@jax.jit
def unicl_loss(zimg: jax.Array, ztxt: jax.Array, t: jax.Array, labels: jax.Array) -> tuple[jax.Array, Metrics]:
    """UniCL (Yang et al. 2022): symmetric InfoNCE where every pair sharing a label is a positive; each row's
    (column's) loss is −mean log-softmax over its positives. Equals `infonce_loss` when all labels differ."""
    logits = t * jnp.einsum("id,jd->ij", zimg.astype(jnp.float32), ztxt.astype(jnp.float32))
    pos = (labels[:, None] == labels[None, :]).astype(jnp.float32)
    loss_i2t = -jnp.mean(jnp.sum(pos * jax.nn.log_softmax(logits, axis=1), 1) / jnp.sum(pos, 1))
    loss_t2i = -jnp.mean(jnp.sum(pos * jax.nn.log_softmax(logits, axis=0), 0) / jnp.sum(pos, 0))
    i2t = jnp.mean(labels[jnp.argmax(logits, axis=1)] == labels)  # a hit is any text of the image's label
    t2i = jnp.mean(labels[jnp.argmax(logits, axis=0)] == labels)
    return 0.5 * (loss_i2t + loss_t2i), {"loss/i2t": loss_i2t, "loss/t2i": loss_t2i, "acc/i2t": i2t,
                                         "acc/t2i": t2i, "positives": jnp.mean(jnp.sum(pos, 1))}


# Losses that also take the batch's labels (config.loss.name; only the full B×B implementation).
LABEL_LOSSES = {"unicl": unicl_loss}

# The contrastive losses by name (config.loss.name): one table for `get_contrastive_loss` and the kernels.
LOSSES = {"infonce": infonce_loss, "sigmoid": sigmoid_loss}
