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

from vlm_jax.models import layers

Array = jax.Array
_lp = nn.with_logical_partitioning


class DecoderBlock(nn.Module):
    """Pre-LN block: causal self-attention (KV-cached when decoding), cross-attention to `context`, MLP."""
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
        if not decode:  # teacher forcing: causal, and the caller's padding mask
            length = x.shape[1]
            causal = jnp.tril(jnp.ones((length, length), bool))[None, None]
            self_mask = causal if self_mask is None else self_mask & causal
        y = layers.Attention(self.num_heads, dtype_mm=self.dtype_mm, name="self_attn")(
            layers.layer_norm("ln_self")(x), mask=self_mask, decode=decode)
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
