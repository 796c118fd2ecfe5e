"""Float64 NumPy forward passes of the towers, written from the papers' definitions (test references only).

ViT (Dosovitskiy et al. 2021: flattened patches · E + positions, transformer, pooled representation, linear head),
pre-LN transformer blocks (x + MHA(LN(x)), x + MLP(LN(x)), final LN; Xiong et al. 2020), multi-head attention
(Vaswani et al. 2017: softmax(QKᵀ/√d_k)V per head, heads concatenated · W_O), the CLIP / SigLIP text tower
(Radford et al. 2021: token + position embeddings, causal or bidirectional, pooled at the last token), MAP pooling
(a learned probe attending to the tokens, then x + MLP(LN(x)); Lee et al. 2019, Zhai et al. 2022), the 2-D sin-cos
position table of the plain-ViT baselines (Beyer et al. 2022), a transformer decoder with cross-attention and
CoCa's unimodal / multimodal split (Yu et al. 2022) and PaLI's encoder (Chen et al. 2023).

Parameters come from an unboxed Flax param tree, looked up by name; nothing here calls the model code. Masks are
given per (query, key) pair as Python predicates and expanded with loops, so no mask array is shared with the model.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

Params = dict[str, Any]
LN_EPS = 1e-6  # Flax / big_vision LayerNorm epsilon


def f64(tree: Any) -> Any:
    """A param (sub)tree as float64 NumPy arrays."""
    if isinstance(tree, dict):
        return {k: f64(v) for k, v in tree.items()}
    return np.asarray(tree, np.float64)


def layer_norm(x: np.ndarray, p: Params, eps: float = LN_EPS) -> np.ndarray:
    """(x − mean) / sqrt(var + eps) · γ + β over the last axis (biased variance)."""
    mu = x.mean(-1, keepdims=True)
    var = np.square(x - mu).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def gelu(x: np.ndarray, approximate: bool = True) -> np.ndarray:
    """GELU (Hendrycks & Gimpel 2016): x·Φ(x), or its tanh approximation."""
    if approximate:
        return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))
    erf = np.vectorize(math.erf)
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def affine(x: np.ndarray, p: Params) -> np.ndarray:
    """x · W + b."""
    return x @ p["kernel"] + p["bias"]


def mlp(x: np.ndarray, p: Params, approximate: bool = True) -> np.ndarray:
    """Two-layer MLP with a GELU in between."""
    return affine(gelu(affine(x, p["Dense_0"]), approximate), p["Dense_1"])


def mask_array(b: int, lq: int, lk: int, visible: Callable[[int, int, int], bool]) -> np.ndarray:
    """bool [B, Lq, Lk] from a predicate visible(row, query, key)."""
    out = np.zeros((b, lq, lk), bool)
    for r in range(b):
        for i in range(lq):
            for j in range(lk):
                out[r, i, j] = visible(r, i, j)
    return out


def attention(xq: np.ndarray, xkv: np.ndarray, p: Params, mask: np.ndarray | None = None) -> np.ndarray:
    """Multi-head attention, one head at a time; mask bool [B, Lq, Lk] (True: the query may read the key)."""
    b, lq, _ = xq.shape
    lk = xkv.shape[1]
    mask = np.ones((b, lq, lk), bool) if mask is None else mask
    if not mask.any(-1).all():
        raise ValueError("a query with no visible key: the reference leaves it undefined")
    heads = p["query_kernel"].shape[1]
    out = np.zeros(xq.shape[:2] + p["out_bias"].shape)
    for h in range(heads):
        q = xq @ p["query_kernel"][:, h] + p["query_bias"][h]
        k = xkv @ p["key_kernel"][:, h] + p["key_bias"][h]
        v = xkv @ p["value_kernel"][:, h] + p["value_bias"][h]
        scores = q @ k.transpose(0, 2, 1) / math.sqrt(q.shape[-1])
        scores = np.where(mask, scores, -np.inf)
        weights = np.exp(scores - scores.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
        out += (weights @ v) @ p["out_kernel"][h]  # concat(heads) · W_O = Σ_h head_h · W_O[h]
    return out + p["out_bias"]


def encoder_block(x: np.ndarray, p: Params, mask: np.ndarray | None, approximate: bool = True) -> np.ndarray:
    """Pre-LN block: x + MHA(LN(x)), then x + MLP(LN(x))."""
    h = layer_norm(x, p["ln_attn"])
    x = x + attention(h, h, p["attn"], mask)
    return x + mlp(layer_norm(x, p["ln_mlp"]), p["mlp"], approximate)


def encoder(x: np.ndarray, p: Params, mask: np.ndarray | None, approximate: bool = True) -> np.ndarray:
    """The blocks encoderblock_0 … in order, then the final LayerNorm."""
    depth = sum(k.startswith("encoderblock_") for k in p)
    for i in range(depth):
        x = encoder_block(x, p[f"encoderblock_{i}"], mask, approximate)
    return layer_norm(x, p["encoder_norm"])


def map_pool(x: np.ndarray, p: Params, valid: np.ndarray | None = None) -> np.ndarray:
    """Attention pooling: the learned probe(s) attend to the (valid) tokens, then z + MLP(LN(z)); [B, Q, D]."""
    b, n, _ = x.shape
    probe = np.broadcast_to(p["probe"], (b,) + p["probe"].shape[1:])
    keys = np.ones((b, n), bool) if valid is None else valid
    z = attention(probe, x, p["attn"], mask_array(b, probe.shape[1], n, lambda r, i, j: bool(keys[r, j])))
    return z + mlp(layer_norm(z, p["ln"]), p["mlp"])


def sincos_2d(h: int, w: int, width: int, temperature: float = 10_000.) -> np.ndarray:
    """[h·w, width] table: the patch at row r, column c (row-major index r·w + c) gets, for i < n = width/4 and
    ω_i = temperature^(−i/(n−1)), the four blocks sin(c·ω), cos(c·ω), sin(r·ω), cos(r·ω)."""
    n = width // 4
    table = np.zeros((h * w, width))
    for r in range(h):
        for c in range(w):
            for i in range(n):
                omega = temperature ** (-i / max(n - 1, 1))
                table[r * w + c, [i, n + i, 2 * n + i, 3 * n + i]] = [
                    math.sin(c * omega), math.cos(c * omega), math.sin(r * omega), math.cos(r * omega)]
    return table


def vit(p: Params, images: np.ndarray, *, patch: tuple[int, int], posemb: str, pool: str,
        patch_mask: np.ndarray | None = None, keep: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """ViT forward: {"encoded" [B, N(+1), D], "pre_logits", and "logits" when the tree has a head}."""
    b, height, width, _ = images.shape
    ph, pw = patch
    gh, gw = height // ph, width // pw
    e = p["embedding"]["kernel"].reshape(ph * pw * images.shape[-1], -1)  # flattened (row, col, channel) patch
    tokens = []
    for r in range(gh):
        for c in range(gw):
            tokens.append(images[:, r * ph:(r + 1) * ph, c * pw:(c + 1) * pw].reshape(b, -1) @ e)
    x = np.stack(tokens, axis=1) + p["embedding"]["bias"]
    d = x.shape[-1]
    if patch_mask is not None:
        x = np.where(patch_mask[..., None], p["mask_token"].reshape(1, 1, d), x)
    x = x + (p["pos_embedding"][0] if posemb == "learn" else sincos_2d(gh, gw, d))
    if keep is not None:
        x = np.stack([x[r, keep[r]] for r in range(b)])
    if pool == "tok":
        x = np.concatenate([np.broadcast_to(p["cls"].reshape(1, 1, d), (b, 1, d)), x], axis=1)
    x = encoder(x, p["Transformer"], None)
    out = {"encoded": x}
    pooled = {"gap": lambda: x.mean(1), "tok": lambda: x[:, 0], "none": lambda: x,
              "map": lambda: map_pool(x, p["MAPHead_0"])[:, 0]}[pool]()
    out["pre_logits"] = pooled
    if "head" in p:
        out["logits"] = affine(pooled, p["head"])
    return out


def text_tower(p: Params, tokens: np.ndarray, *, pad_id: int, causal: bool, pool: str) -> dict[str, np.ndarray]:
    """CLIP / SigLIP text transformer over right-padded tokens: {"encoded", "pre_logits", "logits" with a head}."""
    b, length = tokens.shape
    x = p["embedding"]["embedding"][tokens] + p["pos_embedding"][0, :length]
    valid = tokens != pad_id
    mask = mask_array(b, length, length, lambda r, i, j: bool(valid[r, j]) and (not causal or j <= i))
    x = encoder(x, p["Encoder_0"], mask)
    out = {"encoded": x}
    if pool == "last":  # the last real token (CLIP's EOT position)
        pooled = np.stack([x[r, np.flatnonzero(valid[r])[-1]] for r in range(b)])
    elif pool == "first":
        pooled = x[:, 0]
    elif pool == "gap":  # mean over the real tokens
        pooled = np.stack([x[r, valid[r]].mean(0) for r in range(b)])
    else:
        pooled = map_pool(x, p["MAPHead_0"], valid)[:, 0]
    out["pre_logits"] = pooled
    if "head" in p:
        out["logits"] = affine(pooled, p["head"])
    return out


def decoder_block(x: np.ndarray, p: Params, self_mask: np.ndarray, context: np.ndarray | None,
                  context_mask: np.ndarray | None) -> np.ndarray:
    """Pre-LN decoder block: masked self-attention, cross-attention to the context (when it has one), MLP."""
    h = layer_norm(x, p["ln_self"])
    x = x + attention(h, h, p["self_attn"], self_mask)
    if "cross_attn" in p:
        x = x + attention(layer_norm(x, p["ln_cross"]), context, p["cross_attn"], context_mask)
    return x + mlp(layer_norm(x, p["ln_mlp"]), p["mlp"])


def text_decoder(p: Params, tokens: np.ndarray, context: np.ndarray | None = None, *, pad_id: int = 0,
                 prefix: np.ndarray | None = None, prefix_len: np.ndarray | None = None,
                 parallel: np.ndarray | None = None, context_valid: np.ndarray | None = None,
                 unimodal_only: bool = False) -> dict[str, np.ndarray]:
    """Decoder over [prefix P | text L | CLS when the tree has one]: {"logits" [B, L, V], "cls" with a CLS}.

    Position i reads position j when j is a real token (prefix, CLS and non-pad text) and j ≤ i, or j is in the
    prefix or among the first prefix_len text positions, or the row is parallel (bidirectional); no position but
    the CLS itself reads the CLS. Blocks without "cross_attn" params (CoCa's unimodal ones) see the CLS; the others
    see the prefix and text only.
    """
    b, length = tokens.shape
    n_prefix = 0 if prefix is None else prefix.shape[1]
    x = p["embedding"]["embedding"][tokens] + p["pos_embedding"][0, :length]
    if prefix is not None:
        x = np.concatenate([prefix, x], axis=1)
    has_cls = int("cls" in p)
    n = n_prefix + length + has_cls
    real = np.concatenate([np.ones((b, n_prefix), bool), tokens != pad_id, np.ones((b, has_cls), bool)], axis=1)
    plen = np.zeros(b, int) if prefix_len is None else np.asarray(prefix_len)
    par = np.zeros(b, bool) if parallel is None else np.asarray(parallel)

    def visible(r: int, i: int, j: int) -> bool:
        if has_cls and j == n - 1:
            return i == n - 1
        return bool(real[r, j]) and (j <= i or j < n_prefix + plen[r] or bool(par[r]))

    full_mask = mask_array(b, n, n, visible)
    cmask = None
    if context is not None:
        cv = np.ones(context.shape[:2], bool) if context_valid is None else context_valid
        cmask = mask_array(b, n, context.shape[1], lambda r, i, j: bool(cv[r, j]))
    out: dict[str, np.ndarray] = {}
    depth = sum(k.startswith("block_") for k in p)
    if has_cls:
        x = np.concatenate([x, np.broadcast_to(p["cls"], (b, 1, x.shape[-1]))], axis=1)
    for i in range(depth):
        blk = p[f"block_{i:02d}"]
        if has_cls and "cross_attn" in blk and "cls" not in out:  # the multimodal blocks drop the CLS
            out["cls"] = layer_norm(x[:, -1], p["cls_norm"])
            x, full_mask, cmask = x[:, :-1], full_mask[:, :-1, :-1], None if cmask is None else cmask[:, :-1]
            if unimodal_only:
                return out
        x = decoder_block(x, blk, full_mask, context, cmask)
    if has_cls and "cls" not in out:
        out["cls"] = layer_norm(x[:, -1], p["cls_norm"])
        x = x[:, :-1]
    if unimodal_only:
        return out
    x = layer_norm(x[:, n_prefix:], p["decoder_norm"])
    out["pre_logits"] = x
    out["logits"] = affine(x, p["head"])
    return out


def pali_context(p: Params, images: np.ndarray, prompt: np.ndarray, *, patch: tuple[int, int], posemb: str,
                 pad_id: int, approximate: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """PaLI's encoder: projected ViT tokens + embedded prompt, bidirectional, prompt pads hidden → (tokens, valid)."""
    img = affine(vit(p["img"], images, patch=patch, posemb=posemb, pool="none")["encoded"], p["img_proj"])
    txt = p["prompt_embedding"]["embedding"][prompt] + p["prompt_pos"][0, :prompt.shape[1]]
    x = np.concatenate([img, txt], axis=1)
    valid = np.concatenate([np.ones(img.shape[:2], bool), prompt != pad_id], axis=1)
    mask = mask_array(x.shape[0], x.shape[1], x.shape[1], lambda r, i, j: bool(valid[r, j]))
    return encoder(x, p["encoder"], mask, approximate), valid
