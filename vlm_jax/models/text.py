"""Text transformer encoder (causal or bidirectional) over right-padded token ids."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlm_jax.models import layers

Array = jax.Array
# "last": the last non-pad token; "eos": the first `eos_id` (HF CLIP); "argmax": the highest token id (OpenAI CLIP,
# open_clip); "final": the final position whatever it holds (SigLIP); "first", "map" (attention pooling), "gap" (mean).
POOL_TYPES = ("last", "eos", "argmax", "final", "first", "map", "gap")


class TextTransformer(nn.Module):
    """Token embedding + learned posemb + pre-LN encoder + pooling + optional linear head."""
    vocab_size: int
    width: int = 512
    depth: int = 12
    mlp_dim: int = 2048
    num_heads: int = 8
    causal: bool = True
    pool_type: str = "last"
    num_classes: int | None = None
    pad_id: int = 0
    max_len: int = 64
    dropout: float = 0.0
    scan: bool = False
    remat_policy: str = "none"
    dtype_mm: str = "float32"
    residual_dtype: str = "float32"  # the residual stream (layers' mixed-precision policy); e.g. "bfloat16" at scale
    attention_impl: str = "einsum"  # layers.ATTENTION_IMPLS ("cudnn": flash attention on NVIDIA GPUs)
    act: str = "gelu_tanh"  # the MLPs' activation (layers.ACTIVATIONS)
    ln_eps: float = 1e-6  # every LayerNorm's epsilon
    pad_mask: bool = True  # pad tokens are masked out as attention keys (False: only the causal mask, as CLIP and
    # SigLIP checkpoints were trained; a pad id inside a text is then an ordinary token)
    eos_id: int = -1  # pool_type "eos" pools at the first occurrence of this id
    head_bias: bool = True  # False: the projection `head` has no bias

    @nn.compact
    def __call__(self, tokens: Array, *, train: bool = False) -> tuple[Array, dict[str, Array]]:
        if self.pool_type not in POOL_TYPES:
            raise ValueError(f"pool_type must be one of {POOL_TYPES}, got {self.pool_type!r}")
        b, length = tokens.shape
        if length > self.max_len:
            raise ValueError(f"sequence length {length} exceeds max_len {self.max_len}")
        aux: dict[str, Array] = {}
        emb_init = nn.with_logical_partitioning(nn.initializers.normal(stddev=0.02), ("vocab", "embed"))
        x = nn.Embed(self.vocab_size, self.width, embedding_init=emb_init, name="embedding")(tokens)
        pe = layers.posemb_learned(self, "pos_embedding", self.max_len, self.width)
        x = (x + pe[:, :length]).astype(jnp.dtype(self.residual_dtype))
        aux["embedded"] = x
        x = nn.with_logical_constraint(nn.Dropout(self.dropout)(x, deterministic=not train), layers.BSE)

        valid = tokens != self.pad_id  # [B, L]
        if self.pool_type == "eos" and self.eos_id < 0:
            raise ValueError("pool_type='eos' needs eos_id")
        mask = jnp.broadcast_to((valid if self.pad_mask else jnp.ones_like(valid))[:, None, None, :],
                                (b, 1, length, length))
        if self.causal:
            mask = mask & jnp.tril(jnp.ones((length, length), bool))[None, None]
        x, enc_aux = layers.Encoder(depth=self.depth, mlp_dim=self.mlp_dim, num_heads=self.num_heads,
                                    dropout=self.dropout, act=self.act, scan=self.scan,
                                    remat_policy=self.remat_policy, dtype_mm=self.dtype_mm,
                                    attention_impl=self.attention_impl, ln_eps=self.ln_eps,
                                    name="Encoder_0")(x, mask, train=train)
        aux.update({f"encoder/{k}": v for k, v in enc_aux.items()})
        aux["encoded"] = x

        if self.pool_type == "last":
            idx = jnp.maximum(jnp.sum(valid, axis=1) - 1, 0)
            x = jnp.take_along_axis(x, idx[:, None, None], axis=1)[:, 0]
        elif self.pool_type in ("eos", "argmax"):
            idx = jnp.argmax(tokens == self.eos_id if self.pool_type == "eos" else tokens, axis=1)  # the first one
            x = jnp.take_along_axis(x, idx[:, None, None], axis=1)[:, 0]
        elif self.pool_type == "final":
            x = x[:, -1]
        elif self.pool_type == "first":
            x = x[:, 0]
        elif self.pool_type == "gap":
            w = valid.astype(x.dtype)[..., None]
            x = jnp.sum(x * w, axis=1) / jnp.maximum(jnp.sum(w, axis=1), 1.0)
        else:
            x = layers.MAPHead(num_heads=self.num_heads, mlp_dim=self.mlp_dim, act=self.act, dtype_mm=self.dtype_mm,
                               ln_eps=self.ln_eps, name="MAPHead_0")(x, valid if self.pad_mask else None)
        aux["pre_logits"] = x
        if self.num_classes is None:
            return x, aux
        x = layers.dense(self.num_classes, ("embed", None), self.dtype_mm, out_dtype="float32",
                         use_bias=self.head_bias, name="head")(x)
        x = x.astype(jnp.float32)
        aux["logits"] = x
        return x, aux
