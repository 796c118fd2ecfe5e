"""Vision Transformer image encoder."""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlm_jax.models import layers, naflex
from vlm_jax.variants import VARIANTS, parse_variant  # noqa: F401  (re-exported by vlm_jax.models)

Array = jax.Array

POOL_TYPES = ("gap", "map", "tok", "none", "mixture")


class ViT(nn.Module):
    """ViT: conv patchify, posemb, pre-LN encoder, pooling, optional linear head."""
    variant: str | None = None
    width: int = 768
    depth: int = 12
    mlp_dim: int = 3072
    num_heads: int = 12
    patch_size: Sequence[int] = (16, 16)
    posemb: str = "learn"
    pool_type: str = "gap"
    num_classes: int | None = None
    head_zeroinit: bool = False
    dropout: float = 0.0
    scan: bool = False
    remat_policy: str = "none"
    dtype_mm: str = "float32"
    residual_dtype: str = "float32"  # the residual stream (layers' mixed-precision policy); e.g. "bfloat16" at scale
    attention_impl: str = "einsum"  # layers.ATTENTION_IMPLS ("cudnn": flash attention on NVIDIA GPUs)
    mask_token: bool = False  # a learned token that replaces masked patches (`patch_mask`; iBOT / TIPS)
    act: str = "gelu_tanh"  # the MLPs' activation (layers.ACTIVATIONS; OpenAI CLIP: "quick_gelu", open_clip: "gelu")
    ln_eps: float = 1e-6  # every LayerNorm's epsilon (OpenAI CLIP and open_clip: 1e-5)
    ln_pre: bool = False  # a LayerNorm on the embedded tokens (class token included) before the blocks (CLIP)
    pixel_mean: Sequence[float] | None = None  # imported checkpoints: images in [-1, 1] become ((x + 1) / 2 - mean)
    pixel_std: Sequence[float] | None = None  # / std inside the model, the normalisation the weights were trained on
    head_bias: bool = True  # False: the projection `head` has no bias (OpenAI CLIP, open_clip)
    posemb_grid: int | None = None  # side G of a learned G×G position table resized to each input's patch grid
    # (antialiased bilinear, as SigLIP 2): needed for NaFlex inputs (models/naflex.py); None: the table has the
    # fixed input's grid
    mixture_tokens: int = 0  # pool_type "mixture": this many learned tokens join the patches and are the output,
    # [B, K, width] (Llip's visual mixture tokens; the projection head maps each)
    locked: bool = False  # LiT: the encoder's output is a constant to autodiff (no backward pass through the
    # stem, positions and transformer; freeze them with optim.freeze so weight decay leaves them alone too)

    def _cfg(self) -> dict[str, Any]:
        """Size fields, overridden by `variant` when set."""
        cfg = dict(width=self.width, depth=self.depth, mlp_dim=self.mlp_dim, num_heads=self.num_heads,
                   patch_size=tuple(self.patch_size))
        if self.variant is not None:
            cfg.update(parse_variant(self.variant))
        return cfg

    @nn.compact
    def __call__(self, image: Array | dict[str, Array], *, train: bool = False, keep: Array | None = None,
                 patch_mask: Array | None = None) -> tuple[Array, dict[str, Array]]:
        """`image`: NHWC in [-1, 1], or a NaFlex batch (models/naflex.py: patches, positions, mask, grid).
        `keep` int [B, K]: encode only these patch positions (MAE's visible patches; None: all). `patch_mask`
        bool [B, N]: patches replaced by the learned mask token before positions are added (needs mask_token)."""
        c = self._cfg()
        d, patch = c["width"], c["patch_size"]
        if self.pool_type not in POOL_TYPES:
            raise ValueError(f"pool_type must be one of {POOL_TYPES}, got {self.pool_type!r}")
        aux: dict[str, Array] = {}
        flex = naflex.is_naflex(image)
        if flex:
            naflex.check(image)
            if keep is not None or patch_mask is not None:
                raise ValueError("NaFlex inputs do not take keep / patch_mask (MAE-style masking)")
            if self.posemb != "learn" or not self.posemb_grid:
                raise ValueError("NaFlex inputs need posemb='learn' and posemb_grid (the learned table's side)")
            pixels = image["patches"].reshape(*image["patches"].shape[:2], patch[0], patch[1], -1)
        else:
            pixels = image
        if (self.pixel_mean is None) != (self.pixel_std is None):
            raise ValueError("set both pixel_mean and pixel_std, or neither")
        if self.pixel_mean is not None:
            mean, std = jnp.asarray(self.pixel_mean, jnp.float32), jnp.asarray(self.pixel_std, jnp.float32)
            pixels = ((pixels.astype(jnp.float32) + 1.0) / 2.0 - mean) / std
        embed = nn.Conv(d, patch, strides=patch, padding="VALID", dtype=jnp.dtype(self.dtype_mm),
                        param_dtype=jnp.float32, name="embedding",
                        kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(),
                                                                 (None, None, None, "embed")),
                        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)))
        valid = None
        if flex:  # each patch through the same convolution: one output position per patch
            b, n = pixels.shape[:2]
            x = embed(pixels.reshape(b * n, *pixels.shape[2:])).reshape(b, n, d)
            valid = image["mask"].astype(bool)
        else:
            x = embed(pixels)
        x = x.astype(jnp.dtype(self.residual_dtype))  # the residual stream (layers' mixed-precision policy)
        aux["stem"] = x
        if flex:
            b, h, w = x.shape[0], None, None
        else:
            b, h, w, _ = x.shape
            x = x.reshape(b, h * w, d)
        if self.mask_token:
            token = self.param("mask_token", nn.with_logical_partitioning(nn.initializers.normal(0.02),
                                                                            (None, None, "embed")), (1, 1, d), jnp.float32)
            if patch_mask is not None:
                x = jnp.where(patch_mask[:, :, None], token.astype(x.dtype), x)
        elif patch_mask is not None:
            raise ValueError("patch_mask needs a ViT with mask_token=True")
        if self.posemb == "learn" and self.posemb_grid:
            g = int(self.posemb_grid)
            table = layers.posemb_learned(self, "pos_embedding", g * g, d).reshape(g, g, d)
            if flex:
                pe = naflex.resized_posemb(table, image["positions"], image["grid"])
            elif (h, w) == (g, g):
                pe = table.reshape(1, g * g, d)
            else:  # a fixed input of another grid: the table resized as for a NaFlex image of that grid
                rc = jnp.stack(jnp.meshgrid(jnp.arange(h), jnp.arange(w), indexing="ij"), -1).reshape(1, h * w, 2)
                pe = naflex.resized_posemb(table, rc, jnp.asarray([[h, w]]))
        elif self.posemb == "learn":
            pe = layers.posemb_learned(self, "pos_embedding", h * w, d)
        elif self.posemb == "sincos2d":
            pe = layers.posemb_sincos_2d(h, w, d)
        else:
            raise ValueError(f"posemb must be 'learn' or 'sincos2d', got {self.posemb!r}")
        x = x + pe.astype(x.dtype)
        aux["with_posemb"] = x
        if keep is not None:  # positions are already added, so the encoder knows where each kept patch was
            x = jnp.take_along_axis(x, keep[:, :, None], axis=1)
        if (self.pool_type == "mixture") != (self.mixture_tokens > 0):
            raise ValueError(f"pool_type 'mixture' and mixture_tokens > 0 go together, got pool_type="
                             f"{self.pool_type!r}, mixture_tokens={self.mixture_tokens}")
        if self.pool_type == "mixture":
            k = int(self.mixture_tokens)
            tokens = self.param("mixture", nn.with_logical_partitioning(nn.initializers.normal(0.02),
                                                                        (None, None, "embed")), (1, k, d), jnp.float32)
            x = jnp.concatenate([jnp.broadcast_to(tokens, (b, k, d)).astype(x.dtype), x], axis=1)
            if valid is not None:
                valid = jnp.concatenate([jnp.ones((b, k), bool), valid], axis=1)
        if self.pool_type == "tok":
            cls = self.param("cls", nn.with_logical_partitioning(nn.initializers.zeros, (None, None, "embed")),
                             (1, 1, d), jnp.float32)
            x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, d)).astype(x.dtype), x], axis=1)
            if valid is not None:
                valid = jnp.concatenate([jnp.ones((b, 1), bool), valid], axis=1)
        if self.ln_pre:
            x = layers.layer_norm("ln_pre", self.ln_eps)(x).astype(x.dtype)
        x = nn.Dropout(self.dropout)(x, deterministic=not train)
        x = nn.with_logical_constraint(x, layers.BSE)
        x, enc_aux = layers.Encoder(depth=c["depth"], mlp_dim=c["mlp_dim"], num_heads=c["num_heads"],
                                    dropout=self.dropout, act=self.act, scan=self.scan,
                                    remat_policy=self.remat_policy, dtype_mm=self.dtype_mm,
                                    attention_impl=self.attention_impl, ln_eps=self.ln_eps,
                                    name="Transformer")(x, None if valid is None else valid[:, None, None, :],
                                                        train=train)
        aux.update({f"encoder/{k}": v for k, v in enc_aux.items()})
        if self.locked:
            x = jax.lax.stop_gradient(x)
        aux["encoded"] = x
        if valid is not None:
            aux["mask"] = valid  # the real tokens of `encoded` (decoders cross-attend to these only)
        if self.pool_type == "map":
            x = layers.MAPHead(num_heads=c["num_heads"], mlp_dim=c["mlp_dim"], act=self.act, dtype_mm=self.dtype_mm,
                               ln_eps=self.ln_eps, name="MAPHead_0")(x, valid)
        elif self.pool_type == "gap" and valid is not None:
            weights = valid.astype(x.dtype)[:, :, None]
            x = (x * weights).sum(1) / jnp.maximum(weights.sum(1), 1.0)
        elif self.pool_type == "gap":
            x = jnp.mean(x, axis=1)
        elif self.pool_type == "tok":
            x = x[:, 0]
        elif self.pool_type == "mixture":
            x = x[:, :self.mixture_tokens]
        aux["pre_logits"] = x
        if self.num_classes is None:
            return x, aux
        init = nn.initializers.zeros if self.head_zeroinit else nn.initializers.xavier_uniform()
        x = layers.dense(self.num_classes, ("embed", None), self.dtype_mm, kernel_init=init,
                         out_dtype="float32", use_bias=self.head_bias, name="head")(x)
        x = x.astype(jnp.float32)
        aux["logits"] = x
        return x, aux
