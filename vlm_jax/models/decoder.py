"""Autoregressive text decoder: causal self-attention with a KV cache, optional cross-attention to image tokens.

Teacher-forced (`decode=False`): tokens [B, L] → logits [B, L, V]. Incremental (`decode=True`): one token [B, 1]
per call, keys/values kept in the "cache" collection, created by `init_cache` at the maximum length. Every cache
leaf has a leading batch dimension (positions are stored per row), so beam search can reorder it by gathering.
Parameters and activations carry the same logical axis names as the encoders, so DP/FSDP/TP apply unchanged.

CoCa's split decoder: the first `unimodal_depth` blocks have no cross-attention; with `cls_token` a learned
token is appended after the text for those blocks (it sees every non-pad token; no token sees it) and its
normalised output is `aux["cls"]`, the text embedding. CapPa: rows flagged in `parallel` attend non-causally.
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
    """Pre-LN block: self-attention (masked by the caller; KV-cached when decoding), cross-attention, MLP."""
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


def self_attention_mask(tokens: Array, pad_id: int, extra: int = 0, parallel: Array | None = None,
                        prefix: int = 0, prefix_len: Array | None = None) -> Array:
    """bool [B, 1, N, N] over N = prefix + L + extra positions: `prefix` always-valid leading positions (image
    tokens), the text, `extra` always-valid appended ones (CoCa's CLS). Causal, pad keys hidden; keys among the
    leading `prefix` positions and the first `prefix_len` [B] text positions are seen by every query (prefix-LM);
    rows where `parallel` [B] is true are fully bidirectional (CapPa)."""
    b, length = tokens.shape
    valid = tokens != pad_id
    valid = jnp.concatenate([jnp.ones((b, prefix), bool), valid, jnp.ones((b, extra), bool)], axis=1)
    n = prefix + length + extra
    visible = jnp.broadcast_to(jnp.tril(jnp.ones((n, n), bool))[None, None], (b, 1, n, n))
    if prefix or prefix_len is not None:
        end = prefix + (0 if prefix_len is None else prefix_len.astype(jnp.int32))
        in_prefix = jnp.arange(n)[None, :] < jnp.broadcast_to(jnp.asarray(end), (b,))[:, None]  # [B, N] keys
        visible = visible | in_prefix[:, None, None, :]
    if parallel is not None:
        visible = visible | parallel.astype(bool)[:, None, None, None]
    return visible & valid[:, None, None, :]


class TextDecoder(nn.Module):
    """Token embedding + learned posemb + `depth` DecoderBlocks + LayerNorm + vocabulary logits."""
    vocab_size: int
    width: int = 512
    depth: int = 6
    mlp_dim: int = 2048
    num_heads: int = 8
    max_len: int = 64
    cross_attention: bool = True
    unimodal_depth: int = 0  # lower blocks without cross-attention (CoCa: half the depth)
    cls_token: bool = False  # CoCa: append a learned token in the unimodal blocks; aux["cls"] = its output
    pad_id: int = 0
    dropout: float = 0.0
    scan: bool = False  # nn.scan over each run of identical blocks (unimodal, then multimodal): fast compiles
    remat_policy: str = "none"
    dtype_mm: str = "float32"
    residual_dtype: str = "float32"

    def _blocks(self, start: int, stop: int, cross: bool, x: Array, context: Array | None, mask: Array | None,
                context_mask: Array | None, deterministic: bool, decode: bool, aux: dict[str, Any]) -> Array:
        """Blocks start … stop−1: a Python loop, or one nn.scan (parameters stacked on a leading "layers" axis;
        cache leaves on axis 1, so they stay batch-major for beam search)."""
        block = DecoderBlock
        if self.remat_policy != "none":
            block = nn.remat(DecoderBlock, static_argnums=(5, 6), policy=layers._remat_policy(self.remat_policy),
                             prevent_cse=not self.scan)
        kw = dict(mlp_dim=self.mlp_dim, num_heads=self.num_heads, cross_attention=cross, dropout=self.dropout,
                  dtype_mm=self.dtype_mm)
        if not self.scan:
            for i in range(start, stop):
                x, _ = block(name=f"block_{i:02d}", **kw)(x, context, mask, context_mask, deterministic, decode)
                aux[f"block{i:02d}"] = x
            return x
        if stop == start:
            return x
        scanned = nn.scan(block, variable_axes={"params": 0, "cache": 1},
                          split_rngs={"params": True, "dropout": True}, length=stop - start,
                          in_axes=(nn.broadcast,) * 5, metadata_params={nn.PARTITION_NAME: "layers"})
        name = "multimodal_blocks" if cross else "blocks"
        x, _ = scanned(name=name, **kw)(x, context, mask, context_mask, deterministic, decode)
        return x

    @nn.compact
    def __call__(self, tokens: Array | None, context: Array | None = None, *, train: bool = False,
                 decode: bool = False, parallel: Array | None = None, unimodal_only: bool = False,
                 prefix: Array | None = None, prefix_len: Array | None = None,
                 context_mask: Array | None = None) -> tuple[Array | None, dict[str, Any]]:
        """tokens [B, L] (decode: [B, 1]); context [B, T, D] image tokens → logits float32 [B, L, V].

        parallel: [B] bool, rows that attend bidirectionally (CapPa). unimodal_only: stop after the unimodal
        blocks and return (None, aux) (CoCa's text embedding needs no image). prefix: [B, P, width] embedded
        tokens (e.g. projected image tokens) placed before the text in the same stack, seen by every position,
        with the first `prefix_len` [B] text positions (prefix-LM); logits cover the text only. With decode,
        a prefix prefills the cache: the prefix alone (`tokens=None`, returns (None, aux)) or the prefix and
        `tokens` (a prompt: all of it bidirectional, its pad positions hidden from later queries).
        context_mask: [B, T] bool, the valid context tokens (a padded prompt's pads are not).
        """
        if self.unimodal_depth > self.depth:
            raise ValueError(f"unimodal_depth {self.unimodal_depth} exceeds depth {self.depth}")
        pe = layers.posemb_learned(self, "pos_embedding", self.max_len, self.width)
        embed = nn.Embed(self.vocab_size, self.width, name="embedding",
                         embedding_init=_lp(nn.initializers.normal(stddev=0.02), ("vocab", "embed")))
        residual = jnp.dtype(self.residual_dtype)
        n_prefix = 0 if prefix is None else prefix.shape[1]
        if tokens is None:  # prefill: the prefix alone, into the cache
            if not decode or prefix is None:
                raise ValueError("tokens=None only prefills a decoding cache with a prefix")
            x = prefix.astype(residual)
            b, length = x.shape[0], 0
        else:
            b, length = tokens.shape
            x = embed(tokens)
            if decode:
                position = self.variable("cache", "position", lambda: jnp.zeros((b,), jnp.int32))  # per row
                start = position.value[0]
                position.value = position.value + length
            else:
                if length > self.max_len:
                    raise ValueError(f"sequence length {length} exceeds max_len {self.max_len}")
                start = 0
            x = (x + jax.lax.dynamic_slice_in_dim(pe, start, length, axis=1)).astype(residual)
            if prefix is not None:  # teacher forcing, cache creation, or prefilling prefix + prompt
                x = jnp.concatenate([prefix.astype(residual), x], axis=1)
        x = nn.Dropout(self.dropout)(x, deterministic=not train)
        with_cls = self.cls_token and not decode
        if with_cls:
            cls = self.param("cls", _lp(nn.initializers.normal(stddev=0.02), (None, None, "embed")),
                             (1, 1, self.width), jnp.float32)
            x = jnp.concatenate([x, jnp.broadcast_to(cls, (b, 1, self.width)).astype(x.dtype)], axis=1)
        if decode:  # the validity of the new keys: a prompt's pads are hidden, everything else is valid
            mask = None
            if tokens is not None and prefix is not None:
                mask = jnp.concatenate([jnp.ones((b, n_prefix), bool), tokens != self.pad_id], axis=1)
        else:
            mask = self_attention_mask(tokens, self.pad_id, int(with_cls), parallel, n_prefix, prefix_len)
        cmask = None if context_mask is None else context_mask.astype(bool)[:, None, None, :]
        aux: dict[str, Any] = {}
        split = self.unimodal_depth if self.cross_attention else self.depth  # blocks below have no cross-attention
        x = self._blocks(0, split, False, x, context, mask, cmask, not train, decode, aux)
        if with_cls:  # the multimodal blocks see the text only
            aux["cls"] = layers.layer_norm("cls_norm")(x[:, -1])
            x, mask = x[:, :-1], mask[:, :, :-1, :-1]
        if unimodal_only:
            return None, aux
        x = self._blocks(split, self.depth, True, x, context, mask, cmask, not train, decode, aux)
        if tokens is None:
            return None, aux
        x = layers.layer_norm("decoder_norm")(x[:, x.shape[1] - length:])  # the text positions
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
