"""Autoregressive text decoder: causal self-attention with a KV cache, optional cross-attention to image tokens.

Teacher-forced (`decode=False`): tokens [B, L] → logits [B, L, V]. Decoding (`decode=True`) has three kinds of
call, reached through the seam every generative model shares (`init_cache` / `prefill` / `decode_step`):
  - cache creation (`init_cache`): the "cache" collection (self-attention keys/values) at its full length, the
    prefix plus `max_len` text positions;
  - prefill (`tokens=None`, or a prompt with a prefix): the prefix (a prefix-LM's image tokens and prompt; empty
    for an encoder–decoder) goes through the stack into the self-attention cache, and every cross-attention
    projects the context to keys/values once, into the CONTEXT_CACHE collection;
  - steps: one token [N, 1] per call; cross-attention reads the context cache. N may be r times its rows (beam
    search: row b·r + j belongs to image b), so the context keys/values are held once per image and reordering
    beams never touches them.
Every "cache" leaf has a leading batch dimension (positions are stored per row), so beam search can reorder it by
gathering. Parameters and activations carry the same logical axis names as the encoders, so DP/FSDP/TP apply
unchanged.

CoCa's split decoder: the first `unimodal_depth` blocks have no cross-attention; with `cls_token` a learned
token is appended after the text for those blocks (it sees every non-pad token; no token sees it) and its
normalised output is `aux["cls"]`, the text embedding. CapPa: rows flagged in `parallel` attend non-causally.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vlm_jax.kernels import onednn
from vlm_jax.models import layers

Array = jax.Array
StepFn = Callable[[Array, Any, Array], tuple[Array, Any]]
_lp = nn.with_logical_partitioning
CONTEXT_CACHE = "context_cache"  # per-sequence keys/values of the cross-attended context (one row per image)


class CrossAttention(nn.Module):
    """Multi-head attention of text positions to context tokens (the parameters of `layers.Attention`).

    With `context` its keys/values are projected from it, and stored in CONTEXT_CACHE when decoding with that
    collection mutable (prefill); decoding without one reads them from there, so a decoding step projects only
    its own query. Query rows N = r·B attend in groups of r to the B context rows (row b·r + j reads row b).
    """
    num_heads: int
    dtype_mm: str = "float32"

    @nn.compact
    def __call__(self, x: Array, context: Array | None = None, mask: Array | None = None,
                 decode: bool = False) -> Array:
        """x [N, Lq, D], context [B, T, Dc], mask bool [B, T] (the valid context tokens; None: all) or [B, Lq, T]
        (per query: Flamingo's interleaved sequences, where a token sees one image's latents; N = B) → [N, Lq, D]."""
        d = x.shape[-1]
        hd = d // self.num_heads
        dt = jnp.dtype(self.dtype_mm)
        qkv_init = _lp(nn.initializers.xavier_uniform(in_axis=0, out_axis=(1, 2)), ("embed", "heads", "kv"))
        b_init = _lp(nn.initializers.zeros, ("heads", "kv"))

        def proj(name: str, inp: Array) -> Array:
            w = self.param(f"{name}_kernel", qkv_init, (inp.shape[-1], self.num_heads, hd), jnp.float32)
            b = self.param(f"{name}_bias", b_init, (self.num_heads, hd), jnp.float32)
            y = onednn.einsum("bld,dhk->blhk", inp.astype(dt), w.astype(dt), preferred_element_type=jnp.float32)
            return nn.with_logical_constraint(layers.saveable((y + b).astype(dt)), layers.BSHK)

        q = proj("query", x)
        if context is not None:
            k, v, valid = proj("key", context), proj("value", context), mask
            if decode and self.is_mutable_collection(CONTEXT_CACHE):
                ok = jnp.ones(k.shape[:2], bool) if mask is None else mask.astype(bool)
                for name, value in (("key", k), ("value", v), ("valid", ok)):
                    self.put_variable(CONTEXT_CACHE, name, value)
        elif decode and self.has_variable(CONTEXT_CACHE, "key"):
            k, v, valid = (self.get_variable(CONTEXT_CACHE, name) for name in ("key", "value", "valid"))
        else:
            raise ValueError("a decoder with cross_attention needs `context` (image tokens), or, decoding, the "
                             f"{CONTEXT_CACHE!r} collection that prefill fills")
        (n, lq), b = x.shape[:2], k.shape[0]
        if n % b:
            raise ValueError(f"{n} query rows do not split into groups over {b} context rows")
        q = q.reshape(b, n // b * lq, self.num_heads, hd)  # query rows b·r … b·r + r − 1 read context row b
        logits = onednn.einsum("bqhk,bshk->bhqs", q, k, preferred_element_type=jnp.float32) / np.sqrt(hd)
        if valid is not None:
            if valid.ndim == 3 and (n != b or decode):
                raise ValueError("a per-query context mask [B, Lq, T] needs one query row per context row and no "
                                 "decoding cache")
            visible = valid.astype(bool)[:, None] if valid.ndim == 3 else valid.astype(bool)[:, None, None, :]
            logits = jnp.where(visible, logits, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(logits, axis=-1).astype(dt)
        o = jnp.einsum("bhqs,bshk->bqhk", probs, v).reshape(n, lq, self.num_heads, hd)
        o = nn.with_logical_constraint(o, layers.BSHK)
        wo = self.param("out_kernel", _lp(nn.initializers.xavier_uniform(in_axis=(0, 1), out_axis=2),
                                          ("heads", "kv", "embed")), (self.num_heads, hd, d), jnp.float32)
        bo = self.param("out_bias", _lp(nn.initializers.zeros, ("embed",)), (d,), jnp.float32)
        out = onednn.einsum("bqhk,hkd->bqd", o.astype(dt), wo.astype(dt), preferred_element_type=jnp.float32)
        return layers.saveable((out + bo).astype(dt))


class GatedCrossAttention(nn.Module):
    """Flamingo's gated cross-attention dense layer (Alayrac et al. 2022), placed before a (frozen) LM block:
    x + tanh(α_attn)·CrossAttention(LN(x), context), then + tanh(α_mlp)·MLP(LN(·)). Both gates start at 0, so at
    initialisation the layer is the identity and the LM computes exactly what it computed alone."""
    mlp_dim: int
    num_heads: int
    dtype_mm: str = "float32"

    @nn.compact
    def __call__(self, x: Array, context: Array | None, context_mask: Array | None = None,
                 decode: bool = False) -> Array:
        residual = x.dtype
        gate = lambda name: jnp.tanh(self.param(name, _lp(nn.initializers.zeros, ()), (), jnp.float32))  # noqa: E731
        y = CrossAttention(self.num_heads, self.dtype_mm, name="cross_attn")(
            layers.layer_norm("ln_cross")(x), context, context_mask, decode)
        x = (x + gate("attn_gate") * y.astype(jnp.float32)).astype(residual)
        y = layers.MlpBlock(self.mlp_dim, dtype_mm=self.dtype_mm, name="mlp")(layers.layer_norm("ln_mlp")(x))
        return (x + gate("mlp_gate") * y.astype(jnp.float32)).astype(residual)


class SelfResurrectingFusion(nn.Module):
    """VisualGPT's self-resurrecting activation unit (Chen et al. 2022): from the language state x, a gate
    g = σ(W·LN(x) + b) per dimension; visual gate B_v = g·[g > τ], language gate B_l = (1 − g)·[1 − g > τ];
    output B_v ⊙ CrossAttention(LN(x), context) + B_l ⊙ x. The thresholds make the gates sparse; a gate cut off
    on one side still trains through the other. The bias starts at `bias_init` (language first: σ(−3) ≈ 0.05)."""
    num_heads: int
    threshold: float = 0.2
    bias_init: float = -3.0
    dtype_mm: str = "float32"

    @nn.compact
    def __call__(self, x: Array, context: Array | None, context_mask: Array | None = None,
                 decode: bool = False) -> Array:
        residual = x.dtype
        v = CrossAttention(self.num_heads, self.dtype_mm, name="cross_attn")(
            layers.layer_norm("ln_cross")(x), context, context_mask, decode).astype(jnp.float32)
        g = jax.nn.sigmoid(layers.dense(x.shape[-1], ("embed", None), self.dtype_mm, out_dtype="float32",
                                        bias_init=nn.initializers.constant(self.bias_init), name="gate")(
            layers.layer_norm("ln_gate")(x)).astype(jnp.float32))
        b_vis = jnp.where(g > self.threshold, g, 0.0)
        b_lan = jnp.where(1.0 - g > self.threshold, 1.0 - g, 0.0)
        return (b_vis * v + b_lan * x.astype(jnp.float32)).astype(residual)


class DecoderBlock(nn.Module):
    """Pre-LN block: self-attention (masked by the caller; KV-cached when decoding), cross-attention, MLP; with
    `gated_xattn`, Flamingo's gated cross-attention layer before it all; with `srau_threshold`, VisualGPT's fusion
    of the language state and its cross-attention to the context after the self-attention."""
    mlp_dim: int
    num_heads: int
    cross_attention: bool = True
    dropout: float = 0.0
    dtype_mm: str = "float32"
    gated_xattn: bool = False
    srau_threshold: float = 0.0

    @nn.compact
    def __call__(self, x: Array, context: Array | None, self_mask: Array | None = None,
                 context_mask: Array | None = None, deterministic: bool = True,
                 decode: bool = False) -> tuple[Array, None]:
        residual = x.dtype
        drop = nn.Dropout(self.dropout)
        x = nn.with_logical_constraint(x, layers.BSE)
        if self.gated_xattn:
            x = GatedCrossAttention(self.mlp_dim, self.num_heads, self.dtype_mm, name="gated_xattn")(
                x, context, context_mask, decode)
        y = layers.Attention(self.num_heads, dtype_mm=self.dtype_mm, name="self_attn")(
            layers.layer_norm("ln_self")(x), mask=self_mask, decode=decode)
        x = (x + drop(y, deterministic=deterministic)).astype(residual)
        if self.srau_threshold:
            x = SelfResurrectingFusion(self.num_heads, self.srau_threshold, dtype_mm=self.dtype_mm, name="srau")(
                x, context, context_mask, decode)
        if self.cross_attention:
            y = CrossAttention(self.num_heads, self.dtype_mm, name="cross_attn")(
                layers.layer_norm("ln_cross")(x), context, context_mask, decode)
            x = (x + drop(y, deterministic=deterministic)).astype(residual)
        y = layers.MlpBlock(self.mlp_dim, self.dropout, dtype_mm=self.dtype_mm, name="mlp")(
            layers.layer_norm("ln_mlp")(x), deterministic=deterministic)
        x = nn.with_logical_constraint((x + drop(y, deterministic=deterministic)).astype(residual), layers.BSE)
        return x, None


def self_attention_mask(tokens: Array, pad_id: int, extra: int = 0, parallel: Array | None = None,
                        prefix: int = 0, prefix_len: Array | None = None, prefix_mask: Array | None = None) -> Array:
    """bool [B, 1, N, N] over N = prefix + L + extra positions: `prefix` leading positions (image tokens; valid
    unless `prefix_mask` [B, prefix] says otherwise, e.g. NaFlex padding), the text, `extra` always-valid appended
    ones (CoCa's CLS). Causal, pad keys hidden; keys among the leading `prefix` positions and the first
    `prefix_len` [B] text positions are seen by every query (prefix-LM); rows where `parallel` [B] is true are
    fully bidirectional (CapPa)."""
    b, length = tokens.shape
    valid = tokens != pad_id
    lead = jnp.ones((b, prefix), bool) if prefix_mask is None else prefix_mask.astype(bool)
    valid = jnp.concatenate([lead, valid, jnp.ones((b, extra), bool)], axis=1)
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
    gated_every: int = 0  # Flamingo: a gated cross-attention layer before every n-th block (0: none; scan: 1)
    srau_threshold: float = 0.0  # VisualGPT: its gated fusion with the context in every block, at this τ (0: none)
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
                  dtype_mm=self.dtype_mm, srau_threshold=self.srau_threshold)
        if self.scan and self.gated_every > 1:
            raise ValueError(f"a scanned decoder repeats one block: gated_every must be 0 or 1, got {self.gated_every}")
        if not self.scan:
            for i in range(start, stop):
                gated = bool(self.gated_every) and i % self.gated_every == 0
                x, _ = block(name=f"block_{i:02d}", gated_xattn=gated, **kw)(x, context, mask, context_mask,
                                                                            deterministic, decode)
                aux[f"block{i:02d}"] = x
            return x
        if stop == start:
            return x
        kw["gated_xattn"] = self.gated_every == 1
        scanned = nn.scan(block, variable_axes={"params": 0, "cache": 1, CONTEXT_CACHE: 1},
                          split_rngs={"params": True, "dropout": True}, length=stop - start,
                          in_axes=(nn.broadcast,) * 5, metadata_params={nn.PARTITION_NAME: "layers"})
        name = "multimodal_blocks" if cross else "blocks"
        x, _ = scanned(name=name, **kw)(x, context, mask, context_mask, deterministic, decode)
        return x

    @nn.compact
    def __call__(self, tokens: Array | None, context: Array | None = None, *, train: bool = False,
                 decode: bool = False, parallel: Array | None = None, unimodal_only: bool = False,
                 prefix: Array | None = None, prefix_len: Array | None = None,
                 context_mask: Array | None = None,
                 prefix_mask: Array | None = None) -> tuple[Array | None, dict[str, Any]]:
        """tokens [B, L] (decode: [N, 1]); context [B, T, D] image tokens → logits float32 [B, L, V].

        parallel: [B] bool, rows that attend bidirectionally (CapPa). unimodal_only: stop after the unimodal
        blocks and return (None, aux) (CoCa's text embedding needs no image). prefix: [B, P, width] embedded
        tokens (e.g. projected image tokens) placed before the text in the same stack, seen by every position,
        with the first `prefix_len` [B] text positions (prefix-LM); logits cover the text only.
        context_mask: [B, T] bool, the valid context tokens (a padded prompt's pads are not), or [B, L, T]: the
        context tokens each text position sees (not decoding). prefix_mask: [B, P]
        bool, the valid prefix positions (NaFlex padding is not): hidden as keys, teacher-forced and in the cache.
        Decoding (see the module docstring): `tokens=None` prefills (returns (None, aux)): the prefix (if any)
        into the self-attention cache, the context's keys/values into CONTEXT_CACHE; `tokens` with a prefix
        prefill the prefix and a prompt (all of it bidirectional, its pad positions hidden from later queries);
        otherwise `tokens` are steps, and a step without `context` reads the context cache.
        """
        if self.unimodal_depth > self.depth:
            raise ValueError(f"unimodal_depth {self.unimodal_depth} exceeds depth {self.depth}")
        pe = layers.posemb_learned(self, "pos_embedding", self.max_len, self.width)
        embed = nn.Embed(self.vocab_size, self.width, name="embedding",
                         embedding_init=_lp(nn.initializers.normal(stddev=0.02), ("vocab", "embed")))
        residual = jnp.dtype(self.residual_dtype)
        n_prefix = 0 if prefix is None else prefix.shape[1]
        if tokens is None:  # prefill: the prefix (possibly none) into the cache, the context into its cache
            if not decode or (prefix is None and context is None):
                raise ValueError("tokens=None prefills a decoding cache: it needs decode=True and a prefix or context")
            x = prefix.astype(residual) if prefix is not None else jnp.zeros((context.shape[0], 0, self.width),
                                                                                residual)
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
        if decode:  # the validity of the new keys: prefix padding and a prompt's pads are hidden, the rest valid
            mask = None
            if prefix is not None:
                lead = jnp.ones((b, n_prefix), bool) if prefix_mask is None else prefix_mask.astype(bool)
                mask = lead if tokens is None else jnp.concatenate([lead, tokens != self.pad_id], axis=1)
        else:
            mask = self_attention_mask(tokens, self.pad_id, int(with_cls), parallel, n_prefix, prefix_len,
                                       prefix_mask)
        aux: dict[str, Any] = {}
        split = self.unimodal_depth if self.cross_attention else self.depth  # blocks below have no cross-attention
        x = self._blocks(0, split, False, x, context, mask, context_mask, not train, decode, aux)
        if with_cls:  # the multimodal blocks see the text only
            aux["cls"] = layers.layer_norm("cls_norm")(x[:, -1])
            x, mask = x[:, :-1], mask[:, :, :-1, :-1]
        if unimodal_only:
            return None, aux
        x = self._blocks(split, self.depth, True, x, context, mask, context_mask, not train, decode, aux)
        if tokens is None:
            return None, aux
        x = layers.layer_norm("decoder_norm")(x[:, x.shape[1] - length:])  # the text positions
        aux["pre_logits"] = x
        logits = layers.dense(self.vocab_size, ("embed", "vocab"), self.dtype_mm, out_dtype="float32",
                              name="head")(x)
        return logits.astype(jnp.float32), aux

    def prefill(self, context: Array | None = None, context_mask: Array | None = None, prefix: Array | None = None,
                prompt: Array | None = None, prefix_mask: Array | None = None) -> None:
        """Decoding's first call: the prefix and prompt into the self-attention cache, the context's keys/values
        into CONTEXT_CACHE (both collections mutable)."""
        self(prompt, context, decode=True, prefix=prefix, context_mask=context_mask, prefix_mask=prefix_mask)

    def decode_step(self, tokens: Array) -> Array:
        """One cached step: tokens [N, 1] → logits [N, 1, V] (the "cache" collection is mutated)."""
        return self(tokens, decode=True)[0]

    def init_cache(self, batch_size: int, context: Array | None = None, context_mask: Array | None = None,
                   prefix: Array | None = None, prompt: Array | None = None, prefix_mask: Array | None = None) -> Any:
        """An empty "cache" collection for `batch_size` rows: the prefix and `max_len` text positions (a prompt's
        included). Takes `prefill`'s arguments."""
        del prompt, prefix_mask  # the prompt's positions are among the max_len; validity is written by prefill
        tokens = jnp.zeros((batch_size, self.max_len), jnp.int32)
        return empty_cache(self, tokens, context, decode=True, prefix=prefix, context_mask=context_mask)


def empty_cache(module: nn.Module, *args: Any, method: str | None = None, **kwargs: Any) -> Any:
    """Zeros shaped like the "cache" collection that initialising `module` (`method`) on these inputs creates."""
    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), *args, method=method, **kwargs))
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes["cache"])


class TextGenerator(nn.Module):
    """Base of the image-to-text models (Captioner, PaLI, ImagePrefixLM): the decoding seam, through their
    `text_decoder` and their `decoder` field (TextDecoder fields), given what `decoder_inputs` makes of the
    context that their `encode` returns:

      cache = model.init_cache(B, context); model.apply(…, context, method="prefill") (→ cache, context cache);
      then model.apply(…, tokens [N, 1], method="decode_step") per step (`start_decoding`, `step_fn`).
    """

    def decoder_inputs(self, context: Any) -> dict[str, Any]:
        """`TextDecoder.prefill`'s arguments (context, context_mask, prefix, prompt, prefix_mask) for an encoded
        context."""
        raise NotImplementedError

    def decode_capacity(self, prompt_len: int = 0) -> int:
        """How many tokens (BOS included) decoding can feed after a prompt of `prompt_len` tokens."""
        del prompt_len  # the decoder reads no prompt unless a subclass puts it there
        return int(self.decoder.get("max_len", 64))

    def prefill(self, context: Any) -> None:
        """Writes the prefix into the decoding cache and the context's keys/values into CONTEXT_CACHE."""
        self.text_decoder.prefill(**self.decoder_inputs(context))

    def decode_step(self, tokens: Array) -> Array:
        """One cached step: tokens [N, 1] → logits [N, 1, V]."""
        return self.text_decoder.decode_step(tokens)

    def create_cache(self, tokens: Array, context: Any) -> None:
        """Creates the decoding cache at its full length (used through `init_cache`)."""
        kw = self.decoder_inputs(context)
        self.text_decoder(tokens, kw.get("context"), decode=True, prefix=kw.get("prefix"),
                          context_mask=kw.get("context_mask"), prefix_mask=kw.get("prefix_mask"))

    def init_cache(self, batch_size: int, context: Any) -> Any:
        """An empty "cache" collection for `batch_size` rows of the encoded `context`."""
        tokens = jnp.zeros((batch_size, int(self.decoder.get("max_len", 64))), jnp.int32)
        return empty_cache(self, tokens, context, method="create_cache")


def start_decoding(model: nn.Module, params: Any, context: Any, batch_size: int) -> tuple[Any, Any]:
    """(the "cache" collection after prefill, the CONTEXT_CACHE collection) of a model with the decoding seam
    (a TextGenerator on its encoded context, or a TextDecoder on its context tokens)."""
    cache = model.init_cache(batch_size, context)
    _, state = model.apply({"params": params, "cache": cache}, context, method="prefill",
                           mutable=["cache", CONTEXT_CACHE])
    return state["cache"], state.get(CONTEXT_CACHE, {})


def step_fn(model: nn.Module, params: Any, context_cache: Any) -> StepFn:
    """The decoding library's `step_fn(tokens [N], cache, position) → (logits [N, V], cache)` for `model`, reading
    the (per-image) context cache; N may be a multiple of its rows (beam search)."""
    def step(tokens: Array, cache: Any, position: Array) -> tuple[Array, Any]:
        del position  # the cache keeps its own
        logits, state = model.apply({"params": params, "cache": cache, CONTEXT_CACHE: context_cache},
                                    tokens[:, None], method="decode_step", mutable=["cache"])
        return logits[:, 0], state["cache"]
    return step
