"""timm's SigLIP ViT trunks (open_clip's SigLIP / SigLIP 2 image towers: `visual.trunk.*`) as vlm_jax ViT
parameters. timm builds these by name, so the name fixes what the tensors cannot show: the head count and the
MLP activation (timm gives some SigLIP names tanh GELU and others exact GELU)."""
from __future__ import annotations

from typing import Any

from vlm_jax.interop import layout, posemb
from vlm_jax.interop.layout import ConversionError, Source, Tree

# timm 1.0 model name → (heads, activation) of its MAP-pooled SigLIP ViTs (timm/models/vision_transformer.py)
_TANH = "gelu_tanh"
SIGLIP_MAP = {
    **{f"vit_base_patch16_siglip_{s}": (12, "gelu") for s in (224, 256, 384, 512)},
    "vit_base_patch32_siglip_256": (12, _TANH),
    **{f"vit_large_patch16_siglip_{s}": (16, "gelu") for s in (256, 384)},
    "vit_large_patch16_siglip_512": (16, _TANH),
    **{f"vit_so400m_patch14_siglip_{s}": (16, "gelu") for s in (224, 378, 384)},
    **{f"vit_so400m_patch16_siglip_{s}": (16, _TANH) for s in (256, 384, 512)},
    **{f"vit_giantopt_patch16_siglip_{s}": (16, _TANH) for s in (256, 384)},
}
EPS = 1e-6  # timm's ViT LayerNorm


def read(src: Source, v: dict[str, Any], image_size: int | None, prefix: str = "visual.trunk.") -> tuple[Tree, dict, int]:
    """(params, ViT fields, image size) of a timm SigLIP trunk; a new image size resamples the position table as
    timm's checkpoint filter does (bicubic, antialiased)."""
    name = v.get("timm_model_name")
    if name not in SIGLIP_MAP:
        raise ConversionError(f"open_clip timm image tower {name!r} is not supported (known: the MAP-pooled SigLIP "
                              f"ViTs {sorted(SIGLIP_MAP)})")
    if v.get("timm_pool", "avg") != "map" or (v.get("timm_proj") or "none") != "none":
        raise ConversionError(f"open_clip timm tower with timm_pool={v.get('timm_pool')!r}, "
                              f"timm_proj={v.get('timm_proj')!r}: only the SigLIP layout (map, none) is supported")
    heads, act = SIGLIP_MAP[name]
    kernel = src.take(prefix + "patch_embed.proj.weight")
    d, channels, p, p2 = kernel.shape
    if channels != 3 or p != p2 or d % heads:
        raise ConversionError(f"{name}: patch embedding of shape {kernel.shape} does not fit {heads} heads, square "
                              f"RGB patches")
    size = int(v.get("image_size", 224))
    grid = size // p
    img: Tree = {"embedding": {"kernel": layout.conv(kernel), "bias": src.take(prefix + "patch_embed.proj.bias", (d,))}}
    pos = src.take(prefix + "pos_embed", (1, grid * grid, d))[0]
    new = image_size or size
    if new % p:
        raise ConversionError(f"image_size {new} is not a multiple of the patch size {p}")
    if new != size:
        pos = posemb.resize_grid(pos.reshape(grid, grid, d), (new // p, new // p), antialias=True).reshape(-1, d)
    img["pos_embedding"] = pos[None]
    depth = 0
    while f"{prefix}blocks.{depth}.norm1.weight" in src:
        depth += 1
    mlp = src.tensors[f"{prefix}blocks.0.mlp.fc1.weight"].shape[0] if depth else 0
    if depth == 0:
        raise ConversionError(f"{src.origin}: no transformer blocks under {prefix}blocks.")
    img["Transformer"] = {f"encoderblock_{i}": _block(src, f"{prefix}blocks.{i}.", d, mlp, heads)
                          for i in range(depth)}
    img["Transformer"]["encoder_norm"] = _norm(src, prefix + "norm", d)
    pre = prefix + "attn_pool."
    q = (src.take(pre + "q.weight", (d, d)), src.take(pre + "q.bias", (d,)))
    kv_w, kv_b = src.take(pre + "kv.weight", (2 * d, d)), src.take(pre + "kv.bias", (2 * d,))
    out = (src.take(pre + "proj.weight", (d, d)), src.take(pre + "proj.bias", (d,)))
    pool_mlp = src.tensors[pre + "mlp.fc1.weight"].shape[0] if pre + "mlp.fc1.weight" in src.tensors else mlp
    if pool_mlp != mlp:
        raise ConversionError(f"{name}: attention-pool MLP width {pool_mlp} differs from the blocks' {mlp}")
    img["MAPHead_0"] = {
        "probe": src.take(pre + "latent", (1, 1, d)),
        "attn": layout.attention(q, (kv_w[:d], kv_b[:d]), (kv_w[d:], kv_b[d:]), out, heads),
        "ln": _norm(src, pre + "norm", d),
        "mlp": _mlp(src, pre + "mlp.", d, mlp)}
    fields = dict(width=d, depth=depth, mlp_dim=mlp, num_heads=heads, patch_size=(p, p), posemb="learn",
                  pool_type="map", num_classes=None, act=act, ln_eps=EPS)
    return img, fields, new


def _norm(src: Source, name: str, d: int) -> Tree:
    return layout.norm(src.take(name + ".weight", (d,)), src.take(name + ".bias", (d,)))


def _mlp(src: Source, prefix: str, d: int, mlp: int) -> Tree:
    return {"Dense_0": layout.dense(src.take(prefix + "fc1.weight", (mlp, d)), src.take(prefix + "fc1.bias", (mlp,))),
            "Dense_1": layout.dense(src.take(prefix + "fc2.weight", (d, mlp)), src.take(prefix + "fc2.bias", (d,)))}


def _block(src: Source, prefix: str, d: int, mlp: int, heads: int) -> Tree:
    """One timm Block: norm1, attn.qkv (fused [3d, d]) and attn.proj, norm2, mlp.fc1 / fc2."""
    qkv = layout.split_in_proj(src.take(prefix + "attn.qkv.weight", (3 * d, d)),
                               src.take(prefix + "attn.qkv.bias", (3 * d,)))
    out = (src.take(prefix + "attn.proj.weight", (d, d)), src.take(prefix + "attn.proj.bias", (d,)))
    return {"ln_attn": _norm(src, prefix + "norm1", d), "attn": layout.attention(*qkv, out, heads),
            "ln_mlp": _norm(src, prefix + "norm2", d), "mlp": _mlp(src, prefix + "mlp.", d, mlp)}

