"""Autoregressive text decoder: causal self-attention with a KV cache, optional cross-attention to image tokens.

Teacher-forced (`decode=False`): tokens [B, L] → logits [B, L, V]. Incremental (`decode=True`): one token [B, 1]
per call, keys/values kept in the "cache" collection, created by `init_cache` at the maximum length. Every cache
leaf has a leading batch dimension (positions are stored per row), so beam search can reorder it by gathering.
Parameters and activations carry the same logical axis names as the encoders, so DP/FSDP/TP apply unchanged.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vlm_jax.models import layers

Array = jax.Array
_lp = nn.with_logical_partitioning


class CachedSelfAttention(nn.Module):
    """Causal multi-head self-attention; with `decode`, appends one position to a KV cache and attends to it."""
    num_heads: int
    dtype_mm: str = "float32"

    @nn.compact
    def __call__(self, x: Array, mask: Array | None = None, *, decode: bool = False) -> Array:
        """x [B, L, D]; `mask` [B, 1, L, L] (teacher forcing) is combined with causality."""
        b, length, d = x.shape
        hd = d // self.num_heads
        dt = jnp.dtype(self.dtype_mm)
        qkv_init = _lp(nn.initializers.xavier_uniform(in_axis=0, out_axis=(1, 2)), ("embed", "heads", "kv"))
        b_init = _lp(nn.initializers.zeros, ("heads", "kv"))

        def proj(name: str) -> Array:
            w = self.param(f"{name}_kernel", qkv_init, (d, self.num_heads, hd), jnp.float32)
            bias = self.param(f"{name}_bias", b_init, (self.num_heads, hd), jnp.float32)
            return nn.with_logical_constraint(
                jnp.einsum("bld,dhk->blhk", x.astype(dt), w.astype(dt)) + bias.astype(dt), layers.BSHK)

        q, k, v = proj("query"), proj("key"), proj("value")
        if decode:
            k, v, mask = self._update_cache(k, v)
        else:
            causal = jnp.tril(jnp.ones((length, length), bool))[None, None]
            mask = causal if mask is None else mask & causal
        logits = jnp.einsum("bqhk,bshk->bhqs", q, k, preferred_element_type=jnp.float32) / np.sqrt(hd)
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(logits, axis=-1).astype(dt)
        o = nn.with_logical_constraint(jnp.einsum("bhqs,bshk->bqhk", probs, v), layers.BSHK)
        wo = self.param("out_kernel", _lp(nn.initializers.xavier_uniform(in_axis=(0, 1), out_axis=2),
                                          ("heads", "kv", "embed")), (self.num_heads, hd, d), jnp.float32)
        bo = self.param("out_bias", _lp(nn.initializers.zeros, ("embed",)), (d,), jnp.float32)
        return jnp.einsum("bqhk,hkd->bqd", o, wo.astype(dt)) + bo.astype(dt)

    def _update_cache(self, k: Array, v: Array) -> tuple[Array, Array, Array]:
        """Writes this step's key/value at the cache index; returns the full cache and the valid-position mask."""
        initialized = self.has_variable("cache", "cached_key")
        cached_k = self.variable("cache", "cached_key", jnp.zeros, k.shape, k.dtype)
        cached_v = self.variable("cache", "cached_value", jnp.zeros, v.shape, v.dtype)
        index = self.variable("cache", "index", lambda: jnp.zeros((k.shape[0],), jnp.int32))  # per row, all equal
        if not initialized:  # init_cache: shapes only, at the maximum length
            return k, v, jnp.ones((1, 1, k.shape[1], k.shape[1]), bool)
        if k.shape[1] != 1:
            raise ValueError(f"decode=True takes one position per call, got {k.shape[1]}")
        i = index.value[0]
        cached_k.value = jax.lax.dynamic_update_slice_in_dim(cached_k.value, k.astype(cached_k.value.dtype), i, 1)
        cached_v.value = jax.lax.dynamic_update_slice_in_dim(cached_v.value, v.astype(cached_v.value.dtype), i, 1)
        index.value = index.value + 1
        max_len = cached_k.value.shape[1]
        mask = (jnp.arange(max_len) <= i)[None, None, None, :]
        return cached_k.value, cached_v.value, mask


class DecoderBlock(nn.Module):
    """Pre-LN block: causal self-attention (cached when decoding), cross-attention to `context`, MLP."""
    mlp_dim: int
    num_heads: int
    cross_attention: bool = True
    dropout: float = 0.0
    dtype_mm: str = "float32"

    @nn.compact
    def __call__(self, x: Array, context: Array | None, self_mask: Array | None = None,
                 context_mask: Array | None = None, deterministic: bool = True,
                 decode: bool = False) -> tuple[Array, None]:
        residual = x.dtype
        drop = nn.Dropout(self.dropout)
        x = nn.with_logical_constraint(x, layers.BSE)
        y = CachedSelfAttention(self.num_heads, self.dtype_mm, name="self_attn")(
            layers.layer_norm("ln_self")(x), self_mask, decode=decode)
        x = (x + drop(y, deterministic=deterministic)).astype(residual)
        if self.cross_attention:
            if context is None:
                raise ValueError("a decoder with cross_attention needs `context` (image tokens)")
            y = layers.Attention(self.num_heads, dtype_mm=self.dtype_mm, name="cross_attn")(
                layers.layer_norm("ln_cross")(x), context, mask=context_mask)
            x = (x + drop(y, deterministic=deterministic)).astype(residual)
        y = layers.MlpBlock(self.mlp_dim, self.dropout, dtype_mm=self.dtype_mm, name="mlp")(
            layers.layer_norm("ln_mlp")(x), deterministic=deterministic)
        x = nn.with_logical_constraint((x + drop(y, deterministic=deterministic)).astype(residual), layers.BSE)
        return x, None


class TextDecoder(nn.Module):
    """Token embedding + learned posemb + `depth` DecoderBlocks + LayerNorm + vocabulary logits."""
    vocab_size: int
    width: int = 512
    depth: int = 6
    mlp_dim: int = 2048
    num_heads: int = 8
    max_len: int = 64
    cross_attention: bool = True
    pad_id: int = 0
    dropout: float = 0.0
    dtype_mm: str = "float32"
    residual_dtype: str = "float32"

    @nn.compact
    def __call__(self, tokens: Array, context: Array | None = None, *, train: bool = False,
                 decode: bool = False) -> tuple[Array, dict[str, Any]]:
        """tokens [B, L] (decode: [B, 1]); context [B, T, D] image tokens → logits float32 [B, L, V]."""
        b, length = tokens.shape
        emb_init = _lp(nn.initializers.normal(stddev=0.02), ("vocab", "embed"))
        x = nn.Embed(self.vocab_size, self.width, embedding_init=emb_init, name="embedding")(tokens)
        pe = layers.posemb_learned(self, "pos_embedding", self.max_len, self.width)
        if decode:
            position = self.variable("cache", "position", lambda: jnp.zeros((b,), jnp.int32))  # per row, all equal
            start = position.value[0]
            position.value = position.value + length
        else:
            if length > self.max_len:
                raise ValueError(f"sequence length {length} exceeds max_len {self.max_len}")
            start = 0
        x = (x + jax.lax.dynamic_slice_in_dim(pe, start, length, axis=1)).astype(jnp.dtype(self.residual_dtype))
        x = nn.Dropout(self.dropout)(x, deterministic=not train)
        pad_mask = None if decode else (tokens != self.pad_id)[:, None, None, :]
        aux: dict[str, Any] = {}
        for i in range(self.depth):
            x, _ = DecoderBlock(self.mlp_dim, self.num_heads, self.cross_attention, self.dropout, self.dtype_mm,
                                name=f"block_{i:02d}")(x, context, pad_mask, None, not train, decode)
            aux[f"block{i:02d}"] = x
        x = layers.layer_norm("decoder_norm")(x)
        aux["pre_logits"] = x
        logits = layers.dense(self.vocab_size, ("embed", "vocab"), self.dtype_mm, name="head")(x)
        return logits.astype(jnp.float32), aux

    def init_cache(self, batch_size: int, context: Array | None = None) -> Any:
        """An empty KV cache (the "cache" collection) for `batch_size` rows of up to `max_len` tokens."""
        tokens = jnp.zeros((batch_size, self.max_len), jnp.int32)
        shapes = jax.eval_shape(lambda: self.init(jax.random.key(0), tokens, context, decode=True))
        return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes["cache"])


def step_fn(model: TextDecoder, params: Any, context: Array | None = None):
    """The decoding library's `step_fn(tokens [N], cache, position) → (logits [N, V], cache)` for `model`."""
    def step(tokens: Array, cache: Any, position: Array) -> tuple[Array, Any]:
        del position  # the cache keeps its own
        logits, state = model.apply({"params": params, "cache": cache}, tokens[:, None], context, decode=True,
                                    mutable=["cache"])
        return logits[0][:, 0], state["cache"]
    return step
