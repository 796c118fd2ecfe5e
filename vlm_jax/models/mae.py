"""Masked autoencoder (He et al. 2022): a ViT encoder over the visible patches, a light decoder over all."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlm_jax.models import layers
from vlm_jax.models.vit import ViT

Array = jax.Array


def vit_grid(fields: dict[str, Any], image_size: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """((ph, pw), (gh, gw)): the patch size of ViT `fields` and its patch grid over `image_size`."""
    ph, pw = ViT(**fields, parent=None)._cfg()["patch_size"]
    return (ph, pw), (image_size[0] // ph, image_size[1] // pw)


def decoder_fields(decoder: dict[str, Any]) -> dict[str, Any]:
    """The decoder's width, depth, mlp_dim, num_heads and dtype_mm, defaults filled in."""
    return {"width": 128, "depth": 2, "mlp_dim": 512, "num_heads": 4, "dtype_mm": "float32", **decoder}


class MAE(nn.Module):
    """ViT encoder "img" (the same parameter tree as the two-tower image tower, without its head) and a decoder:
    encoded visible tokens → decoder width, a learned mask token at every hidden position, fixed 2-D sin-cos
    positions, `decoder.depth` blocks, and a linear map to each patch's ph·pw·3 pixels."""
    image: dict[str, Any]
    decoder: dict[str, Any]

    @nn.compact
    def __call__(self, image: Array, *, train: bool = False,
                 keep: Array | None = None) -> tuple[Array, dict[str, Array]]:
        """Pixels predicted for every patch [B, N, ph·pw·3]; `keep` [B, K] the visible positions (None: all)."""
        fields = {**self.image, "pool_type": "none", "num_classes": None}
        (ph, pw), (gh, gw) = vit_grid(fields, image.shape[1:3])
        b, n = image.shape[0], gh * gw
        if keep is None:
            keep = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (b, n))
        tokens, aux = ViT(**fields, name="img")(image, train=train, keep=keep)
        aux = {f"img/{k}": v for k, v in aux.items()}
        aux["features"] = jnp.mean(tokens.astype(jnp.float32), axis=1)  # the probes' image representation
        decoder = MAEDecoder(self.decoder, (gh, gw), (ph, pw), image.shape[-1], name="decoder_module")
        nn.share_scope(self, decoder)  # its parameters sit at the top level: decoder_embed, mask_token, …
        return decoder(tokens, keep, train=train), aux


class MAEDecoder(nn.Module):
    """MAE's decoder as a submodule (for models that add masked image modelling to other heads): encoded visible
    tokens [B, K, D] at positions `keep` [B, K] → pixels of every patch [B, gh·gw, ph·pw·channels]."""
    decoder: dict[str, Any]
    grid: tuple[int, int]
    patch: tuple[int, int]
    channels: int = 3

    @nn.compact
    def __call__(self, tokens: Array, keep: Array, *, train: bool = False) -> Array:
        dec = decoder_fields(self.decoder)
        width, dt = int(dec["width"]), dec["dtype_mm"]
        (gh, gw), (ph, pw) = self.grid, self.patch
        b, n = tokens.shape[0], gh * gw
        x = layers.dense(width, ("embed", None), dt, name="decoder_embed")(tokens).astype(jnp.float32)
        mask_token = self.param("mask_token", nn.with_logical_partitioning(nn.initializers.normal(0.02),
                                                                           (None, None, "embed")),
                                (1, 1, width), jnp.float32)
        full = jnp.broadcast_to(mask_token, (b, n, width)).at[jnp.arange(b)[:, None], keep].set(x)
        full = nn.with_logical_constraint(full + layers.posemb_sincos_2d(gh, gw, width), layers.BSE)
        full, _ = layers.Encoder(depth=int(dec["depth"]), mlp_dim=int(dec["mlp_dim"]),
                                 num_heads=int(dec["num_heads"]), dtype_mm=dt, name="decoder")(full, train=train)
        return layers.dense(ph * pw * self.channels, ("embed", None), dt, name="decoder_pred")(full).astype(jnp.float32)
