"""BERT encoder (Devlin et al. 2019; post-LN, exact GELU) as a text tower, for pretrained weights such as MiniLM
(`vlm_jax/pretrained.py`): sentence embedding by mean pooling over the non-pad tokens, then an optional head."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlm_jax.models import layers

Array = jax.Array
_lp = nn.with_logical_partitioning
POOL_TYPES = ("mean", "first")


def _norm(eps: float, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=eps, dtype=jnp.float32, param_dtype=jnp.float32, name=name,
                        scale_init=_lp(nn.initializers.ones, ("embed",)), bias_init=_lp(nn.initializers.zeros, ("embed",)))


class BertLayer(nn.Module):
    """Self-attention → add & LayerNorm → GELU MLP → add & LayerNorm."""
    mlp_dim: int
    num_heads: int
    eps: float = 1e-12
    dtype_mm: str = "float32"

    @nn.compact
    def __call__(self, x: Array, valid: Array) -> Array:
        b, n, d = x.shape
        heads, dh = self.num_heads, d // self.num_heads
        proj = lambda name: layers.dense(d, ("embed", "mlp"), self.dtype_mm, name=name)(x).reshape(b, n, heads, dh)  # noqa: E731
        q, k, v = proj("query"), proj("key"), proj("value")
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) / jnp.sqrt(dh)
        scores = jnp.where(valid[:, None, None, :], scores, jnp.finfo(jnp.float32).min)
        attn = jax.nn.softmax(scores, axis=-1)
        y = jnp.einsum("bhqk,bkhd->bqhd", attn.astype(v.dtype), v).reshape(b, n, d)
        y = layers.dense(d, ("mlp", "embed"), self.dtype_mm, name="attention_out")(y)
        x = _norm(self.eps, "attention_norm")(x + y.astype(jnp.float32))
        h = jax.nn.gelu(layers.dense(self.mlp_dim, ("embed", "mlp"), self.dtype_mm, name="intermediate")(x)
                        .astype(jnp.float32), approximate=False)
        y = layers.dense(d, ("mlp", "embed"), self.dtype_mm, name="output")(h)
        return nn.with_logical_constraint(_norm(self.eps, "output_norm")(x + y.astype(jnp.float32)), layers.BSE)


class BertEncoder(nn.Module):
    """Word + position + token-type(0) embeddings, LayerNorm, `depth` BertLayers, pooling, optional linear head.
    `locked`: the tower's pooled output is a constant to autodiff (LiT's locked tower: no backward pass through it;
    freeze its parameters with `optim.freeze` so that weight decay leaves them alone too)."""
    vocab_size: int = 30522
    width: int = 384
    depth: int = 6
    mlp_dim: int = 1536
    num_heads: int = 12
    max_len: int = 512  # rows of the position table
    type_vocab_size: int = 2
    eps: float = 1e-12
    pad_id: int = 0
    pool_type: str = "mean"
    num_classes: int | None = None
    locked: bool = False
    dtype_mm: str = "float32"

    @nn.compact
    def __call__(self, tokens: Array, *, train: bool = False) -> tuple[Array, dict[str, Array]]:
        if self.pool_type not in POOL_TYPES:
            raise ValueError(f"pool_type must be one of {POOL_TYPES}, got {self.pool_type!r}")
        b, n = tokens.shape
        if n > self.max_len:
            raise ValueError(f"sequence length {n} exceeds max_len {self.max_len}")
        init = nn.initializers.normal(stddev=0.02)
        word = nn.Embed(self.vocab_size, self.width, embedding_init=_lp(init, ("vocab", "embed")), name="word_embeddings")
        position = self.param("position_embeddings", _lp(init, (None, "embed")), (self.max_len, self.width), jnp.float32)
        token_type = self.param("token_type_embeddings", _lp(init, (None, "embed")), (self.type_vocab_size, self.width),
                                jnp.float32)
        x = word(tokens) + position[None, :n] + token_type[None, :1]
        x = _norm(self.eps, "embeddings_norm")(x)
        valid = tokens != self.pad_id
        for i in range(self.depth):
            x = BertLayer(self.mlp_dim, self.num_heads, self.eps, self.dtype_mm, name=f"layer_{i}")(x, valid)
        aux: dict[str, Array] = {"encoded": x}
        if self.pool_type == "mean":
            w = valid.astype(jnp.float32)[..., None]
            pooled = jnp.sum(x * w, axis=1) / jnp.maximum(jnp.sum(w, axis=1), 1e-9)
        else:
            pooled = x[:, 0]
        if self.locked:
            pooled = jax.lax.stop_gradient(pooled)
        aux["pre_logits"] = pooled
        if self.num_classes is None:
            return pooled, aux
        out = layers.dense(self.num_classes, ("embed", None), self.dtype_mm, name="head")(pooled).astype(jnp.float32)
        aux["logits"] = out
        return out, aux
