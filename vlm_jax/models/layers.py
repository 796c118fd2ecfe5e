"""Shared transformer building blocks with logical-axis sharding annotations.

Mixed precision, one policy for every tower: parameters, LayerNorm, attention logits and softmax, pooled outputs
and embeddings are float32; matmul inputs are cast to `dtype_mm` (e.g. bfloat16); the residual stream between
blocks has the towers' `residual_dtype` (float32 by default; bfloat16 halves activation memory at scale).
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

from vlm_jax.kernels import onednn

Array = jax.Array
Aux = dict[str, Any]

_lp = nn.with_logical_partitioning
_constrain = nn.with_logical_constraint
BSE = ("batch", "seq", "embed")
BSM = ("batch", "seq", "mlp")
BSHK = ("batch", "seq", "heads", "kv")
REMAT_POLICIES = ("none", "full", "minimal")
# Attention kernels: "einsum" (explicit score matrix, fp32 softmax; every platform), "xla" / "cudnn"
# (jax.nn.dot_product_attention; "cudnn" is the fused flash kernel on NVIDIA GPUs, bf16/fp16 only).
ATTENTION_IMPLS = ("einsum", "xla", "cudnn")
ACTIVATIONS = ("gelu_tanh", "gelu", "quick_gelu")
# What remat_policy="minimal" keeps for the backward pass: every projection's output (dense layers, attention
# q/k/v/out) in the dtype it is computed in (bf16 at scale). Naming these instead of saving matmul results keeps
# the float32 accumulators (float32 bias add) out of the saved activations, which would double their memory.
SAVED_ACTIVATION = "projection_out"


def saveable(y: Array) -> Array:
    """`y` marked as an activation remat_policy="minimal" saves."""
    return checkpoint_name(y, SAVED_ACTIVATION)


class Dense(nn.Module):
    """y = x · kernel + bias: matmul inputs in `dtype_mm`, float32 accumulation, bias added in float32 (so its
    gradient is a float32 reduction), result in `out_dtype` (None: `dtype_mm`; heads whose outputs are logits or
    embeddings use float32, so they are never rounded to bf16). Parameters "kernel" / "bias" as in nn.Dense."""
    features: int
    names: tuple
    dtype_mm: str = "float32"
    kernel_init: Callable = nn.initializers.xavier_uniform()
    bias_init: Callable = nn.initializers.zeros
    out_dtype: str | None = None
    use_bias: bool = True  # False: no "bias" parameter (projections of OpenAI CLIP / open_clip)

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kernel = self.param("kernel", _lp(self.kernel_init, self.names), (x.shape[-1], self.features), jnp.float32)
        bias = self.param("bias", _lp(self.bias_init, self.names[-1:]), (self.features,), jnp.float32) \
            if self.use_bias else jnp.zeros((self.features,), jnp.float32)
        dt = jnp.dtype(self.dtype_mm)
        out = dt if self.out_dtype is None else jnp.dtype(self.out_dtype)
        x, kernel_mm = x.astype(dt), kernel.astype(dt)
        if out == jnp.bfloat16 and onednn.can_route(x, kernel_mm):  # bias fused into the kernel, bf16 written once
            y = onednn.linear(x.reshape(-1, x.shape[-1]), kernel_mm, bias)
            return saveable(y.reshape(*x.shape[:-1], self.features))
        # float32 accumulation (through oneDNN, float32 output, when it routes), bias added in float32
        y = onednn.dot_general(x, kernel_mm, (((x.ndim - 1,), (0,)), ((), ())), preferred_element_type=jnp.float32)
        return saveable((y + bias).astype(out))


def dense(features: int, names: tuple, dtype_mm: str, *, kernel_init: Callable = nn.initializers.xavier_uniform(),
          bias_init: Callable = nn.initializers.zeros, out_dtype: str | None = None, use_bias: bool = True,
          name: str | None = None) -> Dense:
    """A `Dense` layer with logically partitioned kernel/bias, matmuls in dtype_mm, result in out_dtype (None:
    dtype_mm; "float32" for logits and embeddings)."""
    return Dense(features, tuple(names), dtype_mm, kernel_init, bias_init, out_dtype, use_bias, name=name)


def layer_norm(name: str | None = None, eps: float = 1e-6) -> nn.LayerNorm:
    """LayerNorm (float32) whose scale/bias are partitioned along "embed"."""
    return nn.LayerNorm(epsilon=eps, dtype=jnp.float32, param_dtype=jnp.float32, name=name,
                        scale_init=_lp(nn.initializers.ones, ("embed",)),
                        bias_init=_lp(nn.initializers.zeros, ("embed",)))


def posemb_sincos_2d(h: int, w: int, width: int, temperature: float = 10_000.) -> Array:
    """Fixed 2-D sin-cos position embedding (MAE / big_vision layout), [1, h*w, width] float32."""
    if width % 4:
        raise ValueError(f"sincos2d posemb needs width divisible by 4, got {width}")
    n = width // 4
    omega = 1.0 / temperature ** (np.arange(n, dtype=np.float64) / max(n - 1, 1))
    y, x = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    xo, yo = x.reshape(-1, 1) * omega, y.reshape(-1, 1) * omega
    pe = np.concatenate([np.sin(xo), np.cos(xo), np.sin(yo), np.cos(yo)], axis=1)
    return jnp.asarray(pe[None], jnp.float32)


def posemb_learned(mdl: nn.Module, name: str, length: int, width: int) -> Array:
    """Creates (inside a compact module) a learned [1, length, width] position embedding."""
    init = _lp(nn.initializers.normal(stddev=1 / np.sqrt(width)), (None, None, "embed"))
    return mdl.param(name, init, (1, length, width), jnp.float32)


def activation(name: str) -> Callable[[Array], Array]:
    """An MLP activation by name (ACTIVATIONS): GELU with the tanh approximation (big_vision, SigLIP), exact
    erf GELU (open_clip's nn.GELU, BERT), or OpenAI CLIP's QuickGELU x·σ(1.702x)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"act must be one of {ACTIVATIONS}, got {name!r}")
    if name == "quick_gelu":
        return lambda h: h * jax.nn.sigmoid(1.702 * h)
    return lambda h: nn.gelu(h, approximate=name == "gelu_tanh")


class MlpBlock(nn.Module):
    """Transformer MLP: Dense(embed->mlp), activation, dropout, Dense(mlp->embed)."""
    mlp_dim: int | None = None
    dropout: float = 0.0
    act: str = "gelu_tanh"  # ACTIVATIONS
    dtype_mm: str = "float32"

    @nn.compact
    def __call__(self, x: Array, *, deterministic: bool = True) -> Array:
        d = x.shape[-1]
        h = dense(self.mlp_dim or 4 * d, ("embed", "mlp"), self.dtype_mm, bias_init=nn.initializers.normal(1e-6))(x)
        h = _constrain(activation(self.act)(h), BSM)
        h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
        return dense(d, ("mlp", "embed"), self.dtype_mm, bias_init=nn.initializers.normal(1e-6))(h)


class Attention(nn.Module):
    """Multi-head dot-product attention with explicit (embed, heads, kv) projections and fp32 softmax."""
    num_heads: int
    head_dim: int | None = None
    dtype_mm: str = "float32"
    impl: str = "einsum"  # ATTENTION_IMPLS; the KV-cached decoding path always uses "einsum"

    @nn.compact
    def __call__(self, x: Array, x_kv: Array | None = None, mask: Array | None = None, *,
                 decode: bool = False) -> Array:
        """x [B, Lq, D], x_kv [B, Lk, D_kv] (default x), mask bool broadcastable to [B, heads, Lq, Lk].

        decode: self-attention of new positions against a KV cache ("cache" collection): one position per decoding
        step, or several at once to prefill a prefix whose positions all attend to each other. Here `mask` is
        None or bool [B, n]: which of the n new positions are valid keys (a padded prompt's pads are not); every
        query sees the cache's valid filled positions. Calling it while the cache is absent creates it at x's
        length.
        """
        x_kv = x if x_kv is None else x_kv
        d = x.shape[-1]
        hd = self.head_dim or d // self.num_heads
        dt = jnp.dtype(self.dtype_mm)
        qkv_init = _lp(nn.initializers.xavier_uniform(in_axis=0, out_axis=(1, 2)), ("embed", "heads", "kv"))
        b_init = _lp(nn.initializers.zeros, ("heads", "kv"))

        def proj(name: str, inp: Array) -> Array:
            w = self.param(f"{name}_kernel", qkv_init, (inp.shape[-1], self.num_heads, hd), jnp.float32)
            b = self.param(f"{name}_bias", b_init, (self.num_heads, hd), jnp.float32)
            y = onednn.einsum("bld,dhk->blhk", inp.astype(dt), w.astype(dt), preferred_element_type=jnp.float32)
            y = saveable((y + b).astype(dt))
            return _constrain(y, BSHK)

        q, k, v = proj("query", x), proj("key", x_kv), proj("value", x_kv)
        if decode:
            k, v, mask = self._update_cache(k, v, mask)
        if self.impl not in ATTENTION_IMPLS:
            raise ValueError(f"attention impl must be one of {ATTENTION_IMPLS}, got {self.impl!r}")
        if self.impl == "einsum" or decode:
            logits = onednn.einsum("bqhk,bshk->bhqs", q, k, preferred_element_type=jnp.float32) / np.sqrt(hd)
            if mask is not None:
                logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
            probs = jax.nn.softmax(logits, axis=-1).astype(dt)
            o = jnp.einsum("bhqs,bshk->bqhk", probs, v)
        else:
            o = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=self.impl)
        o = _constrain(o, BSHK)
        wo = self.param("out_kernel", _lp(nn.initializers.xavier_uniform(in_axis=(0, 1), out_axis=2),
                                          ("heads", "kv", "embed")), (self.num_heads, hd, d), jnp.float32)
        bo = self.param("out_bias", _lp(nn.initializers.zeros, ("embed",)), (d,), jnp.float32)
        out = onednn.einsum("bqhk,hkd->bqd", o.astype(dt), wo.astype(dt), preferred_element_type=jnp.float32)
        return saveable((out + bo).astype(dt))

    def _update_cache(self, k: Array, v: Array, valid: Array | None = None) -> tuple[Array, Array, Array]:
        """Writes this step's keys/values (and their validity [B, n], default all) at the cache index; returns the
        full cache and the mask of valid filled positions [B, 1, 1, Lmax].

        Every cache leaf is batch-major (the index is kept per row, all equal) so beam search can reorder it.
        """
        initialized = self.has_variable("cache", "cached_key")
        cached_k = self.variable("cache", "cached_key", jnp.zeros, k.shape, k.dtype)
        cached_v = self.variable("cache", "cached_value", jnp.zeros, v.shape, v.dtype)
        cached_ok = self.variable("cache", "valid", jnp.zeros, k.shape[:2], bool)
        index = self.variable("cache", "index", lambda: jnp.zeros((k.shape[0],), jnp.int32))
        if not initialized:  # creating the cache: shapes only, at the maximum length
            return k, v, jnp.ones((1, 1, k.shape[1], k.shape[1]), bool)
        n = k.shape[1]  # 1 per decoding step; more to prefill a bidirectional prefix (all n see each other)
        i = index.value[0]
        valid = jnp.ones(k.shape[:2], bool) if valid is None else jnp.broadcast_to(valid.astype(bool), k.shape[:2])
        cached_k.value = jax.lax.dynamic_update_slice_in_dim(cached_k.value, k.astype(cached_k.value.dtype), i, 1)
        cached_v.value = jax.lax.dynamic_update_slice_in_dim(cached_v.value, v.astype(cached_v.value.dtype), i, 1)
        cached_ok.value = jax.lax.dynamic_update_slice_in_dim(cached_ok.value, valid, i, 1)
        index.value = index.value + n
        return cached_k.value, cached_v.value, cached_ok.value[:, None, None, :]


class EncoderBlock(nn.Module):
    """Pre-LN transformer block; returns (x, None) so it can be scanned."""
    mlp_dim: int
    num_heads: int
    dropout: float = 0.0
    act: str = "gelu_tanh"
    dtype_mm: str = "float32"
    attention_impl: str = "einsum"
    ln_eps: float = 1e-6

    @nn.compact
    def __call__(self, x: Array, mask: Array | None = None, deterministic: bool = True) -> tuple[Array, None]:
        x = _constrain(x, BSE)
        residual = x.dtype  # kept through the block (the tower's residual_dtype)
        y = Attention(self.num_heads, dtype_mm=self.dtype_mm, impl=self.attention_impl, name="attn")(
            layer_norm("ln_attn", self.ln_eps)(x), mask=mask)
        x = _constrain((x + nn.Dropout(self.dropout)(y, deterministic=deterministic)).astype(residual), BSE)
        y = MlpBlock(self.mlp_dim, self.dropout, self.act, self.dtype_mm, name="mlp")(
            layer_norm("ln_mlp", self.ln_eps)(x), deterministic=deterministic)
        x = _constrain((x + nn.Dropout(self.dropout)(y, deterministic=deterministic)).astype(residual), BSE)
        return x, None


def _remat_policy(name: str) -> Callable | None:
    """Maps a remat policy name to a jax.checkpoint policy (None = save nothing)."""
    if name not in REMAT_POLICIES:
        raise ValueError(f"remat_policy must be one of {REMAT_POLICIES}, got {name!r}")
    return jax.checkpoint_policies.save_only_these_names(SAVED_ACTIVATION) if name == "minimal" else None


class Encoder(nn.Module):
    """Stack of `depth` EncoderBlocks plus a final LayerNorm, optionally scanned and/or rematerialised."""
    depth: int
    mlp_dim: int
    num_heads: int
    dropout: float = 0.0
    act: str = "gelu_tanh"  # ACTIVATIONS
    scan: bool = False
    remat_policy: str = "none"
    dtype_mm: str = "float32"
    attention_impl: str = "einsum"
    ln_eps: float = 1e-6  # every LayerNorm's epsilon (1e-6 big_vision / SigLIP; 1e-5 OpenAI CLIP, open_clip)

    @nn.compact
    def __call__(self, x: Array, mask: Array | None = None, *, train: bool = False) -> tuple[Array, Aux]:
        block = EncoderBlock
        policy = _remat_policy(self.remat_policy)
        if self.remat_policy != "none":
            block = nn.remat(block, prevent_cse=not self.scan, static_argnums=(3,), policy=policy)
        kw = dict(mlp_dim=self.mlp_dim, num_heads=self.num_heads, dropout=self.dropout,
                  act=self.act, dtype_mm=self.dtype_mm, attention_impl=self.attention_impl, ln_eps=self.ln_eps)
        aux: Aux = {}
        if self.scan:
            scanned = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                              in_axes=(nn.broadcast, nn.broadcast), length=self.depth,
                              metadata_params={nn.PARTITION_NAME: "layers"})
            x, _ = scanned(name="encoderblock", **kw)(x, mask, not train)
        else:
            for i in range(self.depth):
                x, _ = block(name=f"encoderblock_{i}", **kw)(x, mask, not train)
                aux[f"block{i:02d}"] = x
        aux["pre_ln"] = x
        return _constrain(layer_norm("encoder_norm", self.ln_eps)(x), BSE), aux


class AttentionPooler(nn.Module):
    """Attention pooling with `num_queries` learned queries (+ LN and MLP residual); returns [B, num_queries, D].

    One query is MAP pooling (big_vision's MAPHead); many give CoCa's / CapPa's pooled image tokens.
    """
    num_queries: int = 1
    num_heads: int = 12
    mlp_dim: int | None = None
    act: str = "gelu_tanh"
    dtype_mm: str = "float32"
    ln_eps: float = 1e-6

    @nn.compact
    def __call__(self, x: Array, mask: Array | None = None) -> Array:
        """x [B, L, D]; mask [B, L] bool marks valid keys."""
        b, _, d = x.shape
        probe = self.param("probe", _lp(nn.initializers.xavier_uniform(), (None, None, "embed")),
                           (1, self.num_queries, d))
        probe = jnp.broadcast_to(probe, (b, self.num_queries, d))
        attn_mask = None if mask is None else mask[:, None, None, :]
        x = Attention(self.num_heads, dtype_mm=self.dtype_mm, name="attn")(probe, x, mask=attn_mask)
        x = x.astype(jnp.float32)
        y = layer_norm("ln", self.ln_eps)(x)
        return x + MlpBlock(self.mlp_dim, act=self.act, dtype_mm=self.dtype_mm, name="mlp")(y)


class MAPHead(AttentionPooler):
    """Multihead attention pooling with one learned probe; returns [B, D]."""

    def __call__(self, x: Array, mask: Array | None = None) -> Array:
        return super().__call__(x, mask)[:, 0]
