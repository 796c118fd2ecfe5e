"""Analytic matmul FLOPs of every model family, from its config and batch shapes (2 FLOPs per multiply-add).

Counted: dense layers, attention scores and weighted values (the L² terms), the convolutional patch embedding,
attention poolers, vocabulary logits and the contrastive similarity matrix. Elementwise work (softmax, GELU,
norms) and embedding lookups are not, as in the MFU convention. A training step costs three forwards (the
backward pass does two matmuls per forward one) less the patch embedding's input gradient, which pixels do not
need; remat and GradCache recompute is hardware work, not model FLOPs, and is not counted.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import jax


def dense(tokens: float, d_in: int, d_out: int) -> float:
    """A linear layer applied to `tokens` vectors."""
    return 2.0 * tokens * d_in * d_out


def attention(lq: float, lk: float, width: int, heads: int, kv_width: int | None = None) -> float:
    """Multi-head attention of `lq` queries over `lk` keys: Q/K/V/out projections, scores and weighted values."""
    inner = heads * (width // heads)
    kv_width = width if kv_width is None else kv_width
    return (dense(lq, width, inner) + 2 * dense(lk, kv_width, inner) + 2 * 2.0 * lq * lk * inner
            + dense(lq, inner, width))


def mlp(tokens: float, width: int, hidden: int) -> float:
    """Transformer MLP (two dense layers)."""
    return dense(tokens, width, hidden) + dense(tokens, hidden, width)


def encoder_stack(tokens: float, width: int, depth: int, mlp_dim: int, heads: int) -> float:
    """`depth` self-attention blocks over `tokens` positions."""
    return depth * (attention(tokens, tokens, width, heads) + mlp(tokens, width, mlp_dim))


def pooler(queries: int, tokens: float, width: int, heads: int, mlp_dim: int | None) -> float:
    """Attention pooling with `queries` learned probes, plus its MLP (`layers.AttentionPooler`)."""
    return attention(queries, tokens, width, heads) + mlp(queries, width, mlp_dim or 4 * width)


def vit_config(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The ViT size fields (width, depth, mlp_dim, num_heads, patch_size) after its `variant`."""
    from vlm_jax.models.vit import ViT

    return ViT(**dict(fields))._cfg()


def vit(fields: Mapping[str, Any], image_size: tuple[int, int], channels: int = 3,
        num_patches: int | None = None) -> dict[str, float]:
    """One image through a ViT: {"patch_embed", "encoder", "head"} and "tokens" (its output sequence length).
    `num_patches`: a NaFlex sequence (padded to the budget: the padding is computed too), instead of the grid of
    `image_size`."""
    c = vit_config(fields)
    (ph, pw), d = c["patch_size"], c["width"]
    patches = num_patches or (image_size[0] // ph) * (image_size[1] // pw)
    pool = fields.get("pool_type", "gap")
    mixture = int(fields.get("mixture_tokens", 0) or 0) if pool == "mixture" else 0  # Llip's K output tokens
    tokens = patches + (pool == "tok") + mixture
    head = pooler(1, tokens, d, c["num_heads"], c["mlp_dim"]) if pool == "map" else 0.0
    if fields.get("num_classes"):
        head += dense(max(mixture, 1), d, int(fields["num_classes"]))
    return {"patch_embed": dense(patches, ph * pw * channels, d), "head": head, "tokens": tokens,
            "encoder": encoder_stack(tokens, d, c["depth"], c["mlp_dim"], c["num_heads"])}


def text_encoder(fields: Mapping[str, Any], length: int) -> float:
    """One sequence through a `TextTransformer` (its pooling and projection head included)."""
    d, heads, m = fields.get("width", 512), fields.get("num_heads", 8), fields.get("mlp_dim", 2048)
    total = encoder_stack(length, d, fields.get("depth", 12), m, heads)
    if fields.get("pool_type", "last") == "map":
        total += pooler(1, length, d, heads, m)
    if fields.get("num_classes"):
        total += dense(1, d, int(fields["num_classes"]))
    return total


def text_decoder(fields: Mapping[str, Any], length: int, context: int = 0, context_width: int = 0,
                 prefix: int = 0) -> float:
    """One sequence through a `TextDecoder`: `prefix` leading positions (image tokens) and `length` text tokens,
    cross-attention to `context` tokens of `context_width` in its upper blocks, logits over the text positions."""
    d, heads = fields.get("width", 512), fields.get("num_heads", 8)
    depth, m = fields.get("depth", 6), fields.get("mlp_dim", 2048)
    cross = fields.get("cross_attention", True)
    split = fields.get("unimodal_depth", 0) if cross else depth
    n = prefix + length
    n_uni = n + bool(fields.get("cls_token", False))  # CoCa's CLS joins the unimodal blocks only
    total = encoder_stack(n_uni, d, split, m, heads) + encoder_stack(n, d, depth - split, m, heads)
    if cross and depth > split:
        total += (depth - split) * attention(n, context, d, heads, context_width)
    return total + dense(length, d, fields["vocab_size"])


def _shape(batch: Mapping[str, Any], key: str) -> tuple[int, ...]:
    return tuple(batch[key].shape)


def model_forward(model: Any, batch: Mapping[str, Any]) -> dict[str, float]:
    """Forward FLOPs of one batch through `model` (any vlm_jax model), by part; "patch_embed" is the pixel stem.

    `batch` maps the objective's input names to arrays or ShapeDtypeStructs (its `init_batch`).
    """
    from vlm_jax.models import OneTower, TwoTower
    from vlm_jax.models.captioner import Captioner
    from vlm_jax.models.pali import PaLI
    from vlm_jax.models.prefix_lm import ImagePrefixLM

    from vlm_jax.models.vision_prefix import VisionPrefixLM

    if not isinstance(model, (TwoTower, OneTower, Captioner, PaLI, ImagePrefixLM)) or isinstance(model, VisionPrefixLM):
        # (VisionPrefixLM: its mappers and the frozen LM's skipped weight gradients are not modelled here)
        raise NotImplementedError(f"no analytic FLOP count for {type(model).__name__}")
    image = batch["image"]
    naflex = isinstance(image, Mapping)  # NaFlex: patches [B, L, p·p·3]
    if naflex:
        bsz, length, dim = image["patches"].shape
        h = w = 0
        ch = dim // math.prod(vit_config(model.image)["patch_size"])
    else:
        bsz, h, w, ch = _shape(batch, "image")
    out: dict[str, float] = {}

    def image_tower(fields: Mapping[str, Any], key: str, size: tuple[int, int], channels: int) -> dict[str, float]:
        part = vit(fields, size, channels, length if naflex and key == "image" else None)
        if fields.get("locked"):  # LiT: stem and encoder run forward only; the pooling head and projection train,
            # but the head's key/value projections need no input gradient (their input is the locked tokens)
            c = vit_config(fields)
            kv = 2 * dense(part["tokens"], c["width"], c["num_heads"] * (c["width"] // c["num_heads"])) \
                if fields.get("pool_type", "gap") == "map" else 0.0
            out["forward_only"] = out.get("forward_only", 0.0) + bsz * (part["patch_embed"] + part["encoder"])
            out["no_input_grad"] = out.get("no_input_grad", 0.0) + bsz * kv
            out[key] = out.get(key, 0.0) + bsz * (part["head"] - kv)
            return part
        out["patch_embed"] = out.get("patch_embed", 0.0) + bsz * part["patch_embed"]
        out[key] = out.get(key, 0.0) + bsz * (part["encoder"] + part["head"])
        return part

    if isinstance(model, TwoTower):
        k, e = model.mixture_tokens, model.embed_dim
        mix = dict(pool_type="mixture", mixture_tokens=k) if k else {}
        image_tower({"num_classes": model.embed_dim, **model.image, **mix}, "image", (h, w), ch)
        text = {"num_classes": model.embed_dim, **model.text}
        if model.text.get("locked"):  # a locked tower runs forward only; its head trains
            out["forward_only"] = bsz * text_encoder({**text, "num_classes": None}, _shape(batch, "text")[1])
            out["text"] = bsz * dense(1, text.get("width", 512), model.embed_dim)
        else:
            out["text"] = bsz * text_encoder(text, _shape(batch, "text")[1])
        out["similarity"] = dense(bsz, model.embed_dim, bsz)
        if model.predictor:  # SimSiam's predictor on the image embedding
            out["image"] += bsz * (dense(1, e, model.predictor) + dense(1, model.predictor, e))
        if k:  # Llip: keys and values of the mixture, the caption's query; per pair the K scores and the pooling
            out["image"] += bsz * 2 * dense(k, e, e)
            out["text"] += bsz * dense(1, e, e)
            out["similarity"] += 2 * dense(bsz * k, e, bsz)
    elif isinstance(model, OneTower):
        heads = {"num_classes": None if model.separate_heads else model.embed_dim}
        fields = {**model.image, **heads}
        width = vit_config(fields)["width"]
        extra = dense(1, width, model.embed_dim) if model.separate_heads else 0.0
        image_tower(fields, "image", (h, w), ch)
        _, th, tw, tc = _shape(batch, "text")
        image_tower(fields, "text", (th, tw), tc)
        out["image"] += bsz * extra
        out["text"] += bsz * extra
        out["similarity"] = dense(bsz, model.embed_dim, bsz)
    elif isinstance(model, (Captioner, PaLI, ImagePrefixLM)):
        fields = {**model.image, "pool_type": "none", "num_classes": None}
        vit_width = vit_config(fields)["width"]
        tokens = image_tower(fields, "image", (h, w), ch)["tokens"]
        length = _shape(batch, "text")[1]
        prompt = _shape(batch, "prompt")[1] if "prompt" in batch else 0
        dec = dict(model.decoder)
        if isinstance(model, Captioner):
            heads = dec.get("num_heads", 8)
            context = tokens
            if model.cap_queries:
                out["image"] += bsz * pooler(model.cap_queries, tokens, vit_width, heads, None)
                context = model.cap_queries
            if model.embed_dim:
                out["image"] += bsz * (pooler(1, tokens, vit_width, heads, None) + dense(1, vit_width, model.embed_dim))
                out["similarity"] = dense(bsz, model.embed_dim, bsz) + bsz * dense(1, dec.get("width", 512),
                                                                                   model.embed_dim)
            out["decoder"] = bsz * text_decoder(dec, length, context, vit_width)
        elif isinstance(model, PaLI):
            enc = dict(model.encoder)
            width = int(enc.get("width", 512))
            n = tokens + prompt
            out["image"] += bsz * dense(tokens, vit_width, width)
            out["encoder"] = bsz * encoder_stack(n, width, enc.get("depth", 6), enc.get("mlp_dim", 4 * width),
                                                 enc.get("num_heads", 8))
            out["decoder"] = bsz * text_decoder({**dec, "cross_attention": True}, length, n, width)
        else:
            width = dec.get("width", 512)
            out["image"] += bsz * dense(tokens, vit_width, width)
            out["decoder"] = bsz * text_decoder({**dec, "cross_attention": False}, prompt + length, prefix=tokens)
    return out


def mae_forward(model: Any, image_size: tuple[int, int], channels: int, mask_ratio: float) -> dict[str, float]:
    """One image through an MAE trained with `mask_ratio` (the objective masks): the patch stem over every patch,
    the encoder over the visible ones, the decoder over all of them and the pixel head."""
    from vlm_jax.losses.masked import num_masked
    from vlm_jax.models.mae import decoder_fields

    fields = {**model.image, "pool_type": "none", "num_classes": None}
    c = vit_config(fields)
    (ph, pw), d = c["patch_size"], c["width"]
    n = (image_size[0] // ph) * (image_size[1] // pw)
    visible = n - num_masked(n, mask_ratio)
    dec = decoder_fields(model.decoder)
    dw = int(dec["width"])
    return {"patch_embed": dense(n, ph * pw * channels, d),
            "image": encoder_stack(visible, d, c["depth"], c["mlp_dim"], c["num_heads"]),
            "decoder": (dense(visible, d, dw) + encoder_stack(n, dw, int(dec["depth"]), int(dec["mlp_dim"]),
                                                              int(dec["num_heads"])) + dense(n, dw, ph * pw * channels))}


def train_step_flops(model: Any, batch: Mapping[str, Any],
                     forward: Callable[[Mapping[str, Any]], dict[str, float]] | None = None) -> float:
    """Model FLOPs of one training step on `batch` (3 × forward, less the input gradient of the pixel stem and of a
    "no_input_grad" part, and the backward of a "forward_only" part, e.g. similarities under stop_gradient or a
    locked tower). The same with gradient accumulation: an accumulated step is the big-batch step (GradCache's
    extra embedding pass is recomputation, not model FLOPs). `forward`: the objective's count of its loss's forward
    passes by part (default: `model_forward` of one pass through `model`)."""
    parts = (forward or (lambda b: model_forward(model, b)))(batch)
    no_input_grad = parts.get("patch_embed", 0.0) + parts.get("no_input_grad", 0.0)
    return 3 * sum(parts.values()) - no_input_grad - 2 * parts.get("forward_only", 0.0)


def forward_gmacs_per_sample(model: Any, batch: Mapping[str, Any],
                             forward: Callable[[Mapping[str, Any]], dict[str, float]] | None = None) -> float:
    """Forward GMACs per example (image + text, the contrastive similarity included), the unit of Cherti et al.'s
    compute axis: total compute C = this × samples seen."""
    size = jax.tree.leaves(batch)[0].shape[0]
    return sum((forward or (lambda b: model_forward(model, b)))(batch).values()) / 2 / size / 1e9
