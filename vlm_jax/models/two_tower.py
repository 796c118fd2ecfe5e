"""Two-tower (CLIP / SigLIP style) image-text model with learnable temperature and bias."""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlm_jax.models import layers
from vlm_jax.models.bert import BertEncoder
from vlm_jax.models.text import TextTransformer
from vlm_jax.models.vit import ViT

Array = jax.Array
TEXT_TOWERS: dict[str, type[nn.Module]] = {"transformer": TextTransformer, "bert": BertEncoder}


def l2_normalize(x: Array, eps: float = 1e-12) -> Array:
    """L2-normalises the last axis in float32."""
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps))


class TwoTower(nn.Module):
    """ViT image tower + text transformer tower projecting into a shared embedding space."""
    image: dict[str, Any]
    text: dict[str, Any]
    embed_dim: int
    temperature_init: float = 10.0
    bias_init: float | None = None
    text_tower: str = "transformer"  # TEXT_TOWERS: our TextTransformer, or a BERT encoder (pretrained MiniLM)
    # further learned scales an objective's loss reads, (name, initial value) pairs: a log-parameter `name`, its
    # exponential in aux[name] (e.g. OTTER's distillation temperature)
    scales: tuple[tuple[str, float], ...] = ()
    # FILIP: also project every output token of both towers (own linear heads) to unit token embeddings,
    # aux["img/token_z"] [B, N, D] and aux["txt/token_z"] [B, L, D], zero vectors at padding
    token_embeddings: bool = False
    # Llip: the image tower outputs this many mixture tokens (ViT pool_type "mixture"), projected to attention keys
    # aux["img/mixture_keys"] and values aux["img/mixture_values"] [B, K, embed_dim]; the text embedding to a query
    # aux["txt/mixture_query"] [B, embed_dim] (`losses.llip` pools the values per caption). The caption-free image
    # embedding is the values' uniform mean, normalised.
    mixture_tokens: int = 0
    # SimSiam's predictor (DeCLIP): hidden width of a two-layer MLP (ReLU between) on the projected image embedding,
    # aux["img/predicted"] [B, embed_dim]; 0: none
    predictor: int = 0
    # RA-CLIP's retrieval-augmented module: (key features, value features) widths of the retrieved reference pairs
    # (e.g. pixel features of the reference images, sentence embeddings of their captions); () none. With
    # `retrieved` = (keys [B, k, ·], values [B, k, ·]) the image embedding before normalisation gains
    # W_o · Σ_j softmax_j(⟨W_q x, W_k key_j⟩ / √D) W_v value_j, W_o zero at init (so the model starts as without)
    retrieval_dims: tuple[int, ...] = ()

    @nn.compact
    def __call__(self, image: Array | None, text: Array | None, *, train: bool = False,
                 keep: Array | None = None, retrieved: tuple[Array, Array] | None = None
                 ) -> tuple[tuple[Array | None, Array | None], dict[str, Any]]:
        """`keep` int [B, K]: the image tower encodes only these patch positions (ViT's `keep`; None: all).
        `retrieved`: the reference pairs that enrich each image embedding (`retrieval_dims`; None: not enriched)."""
        aux: dict[str, Any] = {}
        zimg = ztxt = None
        mix = dict(pool_type="mixture", mixture_tokens=self.mixture_tokens) if self.mixture_tokens else {}
        if image is not None:
            vit = ViT(**{"num_classes": self.embed_dim, **self.image, **mix}, name="img")
            out, tower_aux = vit(image, train=train, keep=keep)
            aux.update({f"img/{k}": v for k, v in tower_aux.items()})
            if self.mixture_tokens:
                aux["img/mixture_keys"] = self._project("mixture_key", out)
                aux["img/mixture_values"] = out = self._project("mixture_value", out)
                out = jnp.mean(out, axis=1)
            if self.retrieval_dims and (retrieved is not None or self.is_initializing()):
                enriched = self._retrieval_augment(out, retrieved)
                out = out if retrieved is None else enriched  # initialising without retrieval: parameters only
            aux["img/unnormed"] = out
            zimg = l2_normalize(out)
            if self.predictor:
                hidden = nn.relu(self._project("predictor_hidden", out, self.predictor, bias=True))
                aux["img/predicted"] = self._project("predictor_out", hidden, bias=True)
            if self.token_embeddings:
                aux["img/token_z"] = self._tokens("img_token_head", tower_aux["encoded"], tower_aux.get("mask"))
        if text is not None:
            if self.text_tower not in TEXT_TOWERS:
                raise ValueError(f"text_tower must be one of {sorted(TEXT_TOWERS)}, got {self.text_tower!r}")
            tower = TEXT_TOWERS[self.text_tower]
            out, tower_aux = tower(**{"num_classes": self.embed_dim, **self.text}, name="txt")(text, train=train)
            aux.update({f"txt/{k}": v for k, v in tower_aux.items()})
            aux["txt/unnormed"] = out
            ztxt = l2_normalize(out)
            if self.mixture_tokens:
                aux["txt/mixture_query"] = self._project("mixture_query", ztxt)
            if self.token_embeddings:
                aux["txt/token_z"] = self._tokens("txt_token_head", tower_aux["encoded"],
                                                  text != self.text.get("pad_id", 0))

        aux.update(temperature_and_bias(self, self.temperature_init, self.bias_init))
        for name, init in self.scales:
            log_init = nn.with_logical_partitioning(nn.initializers.constant(math.log(init)), ())
            aux[name] = jnp.exp(self.param(name, log_init, (), jnp.float32))
        return (zimg, ztxt), aux


    def _project(self, name: str, x: Array, features: int = 0, bias: bool = False) -> Array:
        """A linear map of embeddings onto `features` (0: embed_dim) in float32 (Llip's key / value / query, bias-free;
        the SimSiam predictor's layers)."""
        return layers.dense(features or self.embed_dim, ("embed", None), "float32", use_bias=bias,
                            out_dtype="float32", name=name)(x)

    def _retrieval_augment(self, x: Array, retrieved: tuple[Array, Array] | None) -> Array:
        """x [B, D] plus the attention read-out of its retrieved (keys, values) (zeros of width `retrieval_dims`
        when None, at initialisation)."""
        if retrieved is None:
            retrieved = tuple(jnp.zeros((x.shape[0], 1, int(w)), jnp.float32) for w in self.retrieval_dims)
        keys, values = (jnp.asarray(r, jnp.float32) for r in retrieved)
        d = self.embed_dim
        q = self._project("retrieval_query", x)
        k = self._project("retrieval_key", keys)
        v = self._project("retrieval_value", values)
        weights = jax.nn.softmax(jnp.einsum("bd,bkd->bk", q, k) / math.sqrt(d), axis=-1)
        read = jnp.einsum("bk,bkd->bd", weights, v)
        out = layers.dense(d, ("embed", None), "float32", out_dtype="float32", kernel_init=nn.initializers.zeros,
                           use_bias=False, name="retrieval_out")(read)
        return x + out

    def _tokens(self, name: str, tokens: Array, valid: Array | None) -> Array:
        """Unit token embeddings [B, N, embed_dim] by a linear head, zero where `valid` [B, N] is false."""
        z = l2_normalize(layers.dense(self.embed_dim, ("embed", None), self.image.get("dtype_mm", "float32")
                                      if name.startswith("img") else self.text.get("dtype_mm", "float32"),
                                      out_dtype="float32", name=name)(tokens))
        return z if valid is None else jnp.where(valid[..., None], z, 0.0)


def temperature_and_bias(module: nn.Module, temperature_init: float, bias_init: float | None) -> dict[str, Array]:
    """Learned log-temperature `t` (returned exponentiated) and, when `bias_init` is set, logit bias `b`."""
    t_init = nn.with_logical_partitioning(nn.initializers.constant(math.log(temperature_init)), ())
    t = module.param("t", t_init, (), jnp.float32)
    out = {"t/parameter": t, "t": jnp.exp(t)}
    if bias_init is not None:
        b_init = nn.with_logical_partitioning(nn.initializers.constant(bias_init), ())
        out["b"] = module.param("b", b_init, (), jnp.float32)
    return out


def embed_pair(model: Any, image: Array | None, text: Array | None,
               train: bool) -> tuple[Array | None, Array | None, dict[str, Any]]:
    """(zimg, ztxt, aux) of a setup-style model with `encode_image` ({"z", "pooled", "tokens"}), `encode_text`
    ({"z"}) and `temperature()`: the evaluators' entry shared by FLAVA and SigLIP 2; aux holds t (and b) and the
    image tower's pooled features and tokens."""
    aux: dict[str, Any] = dict(model.temperature())
    zimg = ztxt = None
    if image is not None:
        im = model.encode_image(image, train=train)
        zimg, aux["img/pre_logits"], aux["img/encoded"] = im["z"], im["pooled"], im["tokens"]
    if text is not None:
        ztxt = model.encode_text(text, train=train)["z"]
    return zimg, ztxt, aux
