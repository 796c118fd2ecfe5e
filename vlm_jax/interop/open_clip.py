"""open_clip checkpoints (`open_clip_config.json` + `open_clip_model.safetensors`, or a config plus a state dict
file): its `CLIP` class with a ViT image tower and the built-in text transformer, in and out, and its SigLIP
models (`CustomTextCLIP` with a timm SigLIP trunk, `interop.timm_vit`) in."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from vlm_jax.interop import layout, posemb, safetensors_io, timm_vit
from vlm_jax.interop.layout import ConversionError, Imported, Source, Tree

CONFIG, WEIGHTS = "open_clip_config.json", "open_clip_model.safetensors"
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
# open_clip's CLIPVisionCfg / CLIPTextCfg defaults (open_clip_torch 3.x), for keys a config leaves out
VISION = dict(layers=12, width=768, head_width=64, mlp_ratio=4.0, patch_size=16, image_size=224)
TEXT = dict(context_length=77, vocab_size=49408, width=512, heads=8, layers=12, mlp_ratio=4.0, pad_id=0, eos_id=2,
            pool_type="argmax", no_causal_mask=False, proj_bias=False)
# options whose non-default values change the architecture into one these towers do not have
VISION_FIXED = dict(ls_init_value=None, attentional_pool=False, pos_embed_type="learnable", pool_type="tok",
                    act_kwargs=None, block_type=None, qk_norm=False, scaled_cosine_attn=False, scale_heads=False,
                    scale_attn_inner=False, scale_attn=False, scale_fc=False, final_ln_after_pool=False)
TEXT_FIXED = dict(ls_init_value=None, embed_cls=False, proj_type="linear", block_type=None, tokenizer_mode=None,
                  qk_norm=False, scaled_cosine_attn=False, scale_heads=False, scale_attn_inner=False, scale_attn=False,
                  scale_fc=False, hf_model_name=None, final_ln_after_pool=False)
# keys that change nothing at inference (training options, tokenizer names) or that the readers interpret
VISION_OTHER = {"layers", "width", "head_width", "mlp_ratio", "patch_size", "image_size", "patch_dropout",
                "attn_pooler_queries", "attn_pooler_heads", "no_ln_pre", "output_tokens", "norm_kwargs",
                "timm_model_name", "timm_model_pretrained", "timm_pool", "timm_proj", "timm_proj_bias", "timm_drop",
                "timm_drop_path"}
TEXT_OTHER = {"context_length", "vocab_size", "hf_tokenizer_name", "tokenizer_kwargs", "width", "heads", "layers",
              "mlp_ratio", "pad_id", "eos_id", "no_causal_mask", "pool_type", "proj_bias", "output_tokens",
              "act_kwargs", "norm_kwargs", "hf_model_pretrained", "hf_proj_type", "hf_pooler_type"}
POOLS = {"argmax": "argmax", "eos": "eos", "last": "final", "first": "first"}
KNOWN_TOP = {"embed_dim", "vision_cfg", "text_cfg", "quick_gelu", "cast_dtype", "init_logit_scale",
             "init_logit_bias", "custom_text"}


def _check_fixed(cfg: dict[str, Any], fixed: dict[str, Any], where: str, other: set[str]) -> None:
    unknown = sorted(set(cfg) - set(fixed) - other)
    if unknown:
        raise ConversionError(f"open_clip {where} keys {unknown} are unknown to this converter (known: "
                              f"{sorted(set(fixed) | other)})")
    for key, value in fixed.items():
        if key in cfg and cfg[key] not in (value, None, False, 0.0) and cfg[key] != value:
            raise ConversionError(f"open_clip {where}.{key}={cfg[key]!r} is not supported (only {value!r})")


def _eps(cfg: dict[str, Any]) -> float:
    return float((cfg.get("norm_kwargs") or {}).get("eps", 1e-5))


def read(path: str | Path, image_size: int | None = None, weights: str | Path | None = None) -> Imported:
    """An open_clip model folder (or its config file, with `weights` a .safetensors state dict) as vlm_jax
    TwoTower fields and parameters; a new `image_size` resizes positions as open_clip's `resize_pos_embed`."""
    path = Path(path)
    config_path = path / CONFIG if path.is_dir() else path
    if not config_path.exists():
        raise ConversionError(f"{path}: no {CONFIG}")
    raw = json.loads(config_path.read_text())
    model_cfg = raw.get("model_cfg", raw)
    pre = raw.get("preprocess_cfg", {})
    weights = Path(weights) if weights else config_path.parent / WEIGHTS
    if not weights.exists():
        raise ConversionError(f"{weights} does not exist (open_clip weights as .safetensors)")
    unknown = sorted(set(model_cfg) - KNOWN_TOP)
    if unknown:
        raise ConversionError(f"{config_path}: open_clip model options {unknown} are not supported (known: "
                              f"{sorted(KNOWN_TOP)})")
    v, t = {**VISION, **model_cfg.get("vision_cfg", {})}, {**TEXT, **model_cfg.get("text_cfg", {})}
    timm = bool(v.get("timm_model_name"))
    _check_fixed(v, {} if timm else VISION_FIXED, "vision_cfg", VISION_OTHER | (set(VISION_FIXED) if timm else set()))
    _check_fixed(t, TEXT_FIXED, "text_cfg", TEXT_OTHER)
    if t["pool_type"] not in POOLS:
        raise ConversionError(f"open_clip text_cfg.pool_type {t['pool_type']!r} is not supported "
                              f"(known: {sorted(POOLS)})")
    act = "quick_gelu" if model_cfg.get("quick_gelu") else "gelu"
    text_act = _act(t.get("act_kwargs"), act)
    src = Source(safetensors_io.read(weights), str(weights))
    embed = int(model_cfg["embed_dim"])
    if timm:  # open_clip's SigLIP: the trunk's MAP head output is the image embedding (timm_proj "none")
        img, img_fields, size = timm_vit.read(src, v, image_size)
        if img_fields["width"] != embed:
            raise ConversionError(f"{config_path}: timm trunk width {img_fields['width']} differs from embed_dim "
                                  f"{embed}, and timm_proj 'none' adds no projection")
    else:
        img, img_fields, size = _vision(src, v, image_size)
        img_fields["act"] = act
        img["head"] = {"kernel": src.take("visual.proj", (v["width"], embed))}
    img_fields.update(pixel_mean=tuple(pre.get("mean", OPENAI_MEAN)), pixel_std=tuple(pre.get("std", OPENAI_STD)))
    prefix = "text." if model_cfg.get("custom_text") else ""
    txt, txt_fields = _text(src, t, prefix)
    txt_fields["act"] = text_act
    if t["proj_bias"]:  # a Linear [embed, width] with bias
        txt["head"] = layout.dense(src.take(prefix + "text_projection.weight", (embed, t["width"])),
                                   src.take(prefix + "text_projection.bias", (embed,)))
    else:
        txt["head"] = {"kernel": src.take(prefix + "text_projection", (t["width"], embed))}
    txt_fields["head_bias"] = bool(t["proj_bias"])
    params = {"img": img, "txt": txt, "t": src.take("logit_scale").reshape(())}
    fields = dict(image=img_fields, text=txt_fields, embed_dim=embed, text_tower="transformer")
    loss = "clip"
    if "logit_bias" in src:
        params["b"] = src.take("logit_bias").reshape(())
        fields["bias_init"], loss = -10.0, "siglip"
    src.finish(ignore=lambda k: k.endswith("attn_mask"))
    info = dict(max_len=t["context_length"], vocab_size=t["vocab_size"], pad_id=t["pad_id"], eos_id=t["eos_id"],
                bos_id=None)
    if t.get("hf_tokenizer_name"):  # open_clip's HFTokenizer cleans text before the HF tokenizer sees it
        info["clean"] = (t.get("tokenizer_kwargs") or {}).get("clean", "whitespace")
    kind = "CustomTextCLIP" if model_cfg.get("custom_text") else "CLIP"
    return Imported(fields, params, size, info, loss, f"open_clip:{kind}" + (f"+timm:{v['timm_model_name']}" if timm else ""))


def _act(kwargs: dict[str, Any] | None, default: str) -> str:
    """The text tower's activation: open_clip's act_kwargs apply to its GELU (approximate="tanh" only)."""
    if not kwargs:
        return default
    if kwargs == {"approximate": "tanh"} and default == "gelu":
        return "gelu_tanh"
    raise ConversionError(f"open_clip text_cfg.act_kwargs={kwargs!r} is not supported (only approximate='tanh' on "
                          f"exact GELU)")


def _vision(src: Source, v: dict[str, Any], image_size: int | None) -> tuple[Tree, dict, int]:
    d, p, size, depth = int(v["width"]), int(v["patch_size"]), int(v["image_size"]), int(v["layers"])
    heads, mlp = d // int(v["head_width"]), int(d * float(v["mlp_ratio"]))
    grid = size // p
    img: Tree = {"embedding": {"kernel": layout.conv(src.take("visual.conv1.weight", (d, 3, p, p))),
                               "bias": np.zeros(d, np.float32)}}
    pos = src.take("visual.positional_embedding", (grid * grid + 1, d))
    img["cls"] = (src.take("visual.class_embedding", (d,)) + pos[0])[None, None]
    new = image_size or size
    if new % p:
        raise ConversionError(f"image_size {new} is not a multiple of the patch size {p}")
    pos = pos[1:]
    if new != size:
        pos = posemb.resize_grid(pos.reshape(grid, grid, d), (new // p, new // p), antialias=True)
    img["pos_embedding"] = pos.reshape(1, -1, d)
    ln_pre = not v.get("no_ln_pre", False)
    if ln_pre:
        img["ln_pre"] = layout.norm(src.take("visual.ln_pre.weight", (d,)), src.take("visual.ln_pre.bias", (d,)))
    img["Transformer"] = layout.encoder_in(src, "visual.transformer.resblocks.", depth, d, mlp, heads,
                                           layout.OPEN_CLIP_BLOCK)
    img["Transformer"]["encoder_norm"] = layout.norm(src.take("visual.ln_post.weight", (d,)),
                                                     src.take("visual.ln_post.bias", (d,)))
    fields = dict(width=d, depth=depth, mlp_dim=mlp, num_heads=heads, patch_size=(p, p), posemb="learn",
                  pool_type="tok", ln_pre=ln_pre, ln_eps=_eps(v), head_bias=False)
    return img, fields, new


def _text(src: Source, t: dict[str, Any], prefix: str = "") -> tuple[Tree, dict]:
    d, depth, length, vocab = int(t["width"]), int(t["layers"]), int(t["context_length"]), int(t["vocab_size"])
    heads, mlp = int(t["heads"]), int(d * float(t["mlp_ratio"]))
    txt: Tree = {"embedding": {"embedding": src.take(prefix + "token_embedding.weight", (vocab, d))},
                 "pos_embedding": src.take(prefix + "positional_embedding", (length, d))[None],
                 "Encoder_0": layout.encoder_in(src, prefix + "transformer.resblocks.", depth, d, mlp, heads,
                                                layout.OPEN_CLIP_BLOCK)}
    txt["Encoder_0"]["encoder_norm"] = layout.norm(src.take(prefix + "ln_final.weight", (d,)),
                                                   src.take(prefix + "ln_final.bias", (d,)))
    fields = dict(vocab_size=vocab, width=d, depth=depth, mlp_dim=mlp, num_heads=heads, max_len=length,
                  causal=not t["no_causal_mask"], pad_mask=False, pad_id=int(t["pad_id"]), ln_eps=_eps(t),
                  pool_type=POOLS[t["pool_type"]], eos_id=int(t["eos_id"]), head_bias=False)
    return txt, fields


# ------------------------------------------------------------------------------------------ export

def write(model: Imported, folder: str | Path) -> Path:
    """Writes `model` as an open_clip folder (open_clip_config.json + open_clip_model.safetensors) that
    `open_clip.create_model("local-dir:FOLDER")` loads. Raises when open_clip's CLIP cannot express it exactly."""
    model = layout.for_export(model)
    f, t = model.fields["image"], model.fields["text"]
    target = "open_clip CLIP"
    layout.require(f, "pool_type", ("tok",), target)
    layout.require(f, "posemb", ("learn",), target)
    layout.require(t, "pad_mask", (False,), target)
    layout.require(t, "pool_type", tuple(POOLS.values()), target)
    if f.get("act", "gelu_tanh") != t.get("act", "gelu_tanh") or f.get("act", "gelu_tanh") not in ("gelu", "quick_gelu"):
        raise ConversionError(f"{target} has one activation for both towers, exact GELU or QuickGELU; this model "
                              f"has image act={f.get('act', 'gelu_tanh')!r}, text act={t.get('act', 'gelu_tanh')!r}")
    for side, tower in (("image", f), ("text", t)):
        if tower.get("head_bias", True):
            raise ConversionError(f"{target} projections have no bias: the {side} tower needs head_bias=False")
    img, txt = model.params["img"], model.params["txt"]
    d = img["pos_embedding"].shape[-1]
    p = tuple(f["patch_size"])
    if p[0] != p[1]:
        raise ConversionError(f"{target} needs square patches, got {p}")
    pos = img["pos_embedding"][0]
    if np.any(img["embedding"]["bias"] != 0):  # open_clip's conv1 has no bias: fold it into the patch positions
        pos = pos + img["embedding"]["bias"]
    tensors = {"visual.conv1.weight": layout.torch_conv(img["embedding"]["kernel"]),
               "visual.class_embedding": img["cls"].reshape(d),
               "visual.positional_embedding": np.concatenate([np.zeros((1, d), np.float32), pos]),
               "visual.proj": img["head"]["kernel"], "text_projection": txt["head"]["kernel"],
               "token_embedding.weight": txt["embedding"]["embedding"],
               "positional_embedding": txt["pos_embedding"][0],
               "logit_scale": np.asarray(model.params["t"], np.float32).reshape(())}
    if f.get("ln_pre"):
        tensors["visual.ln_pre.weight"], tensors["visual.ln_pre.bias"] = img["ln_pre"]["scale"], img["ln_pre"]["bias"]
    tensors.update(layout.encoder_out(img["Transformer"], "visual.transformer.resblocks.", layout.OPEN_CLIP_BLOCK))
    tensors.update(layout.encoder_out(txt["Encoder_0"], "transformer.resblocks.", layout.OPEN_CLIP_BLOCK))
    for ours, theirs in ((img["Transformer"]["encoder_norm"], "visual.ln_post"),
                         (txt["Encoder_0"]["encoder_norm"], "ln_final")):
        tensors[theirs + ".weight"], tensors[theirs + ".bias"] = ours["scale"], ours["bias"]
    if "b" in model.params:
        tensors["logit_bias"] = np.asarray(model.params["b"], np.float32).reshape(())
    vblock, tblock = img["Transformer"]["encoderblock_0"], txt["Encoder_0"]["encoderblock_0"]
    heads = int(vblock["attn"]["query_kernel"].shape[1])
    vision = dict(image_size=model.image_size, layers=layout.vit_depth(img["Transformer"]), width=d,
                  head_width=d // heads, mlp_ratio=vblock["mlp"]["Dense_0"]["kernel"].shape[1] / d, patch_size=p[0])
    if not f.get("ln_pre"):
        vision["no_ln_pre"] = True
    tw = txt["pos_embedding"].shape[-1]
    pool = {v: k for k, v in POOLS.items()}[t["pool_type"]]
    text = dict(context_length=int(txt["pos_embedding"].shape[1]), vocab_size=int(txt["embedding"]["embedding"].shape[0]),
                width=tw, heads=int(tblock["attn"]["query_kernel"].shape[1]), layers=layout.vit_depth(txt["Encoder_0"]),
                mlp_ratio=tblock["mlp"]["Dense_0"]["kernel"].shape[1] / tw, pool_type=pool,
                no_causal_mask=not t.get("causal", True), pad_id=int(t.get("pad_id", 0)))
    if pool == "eos":
        text["eos_id"] = int(t["eos_id"])
    for cfg, eps in ((vision, f.get("ln_eps", 1e-6)), (text, t.get("ln_eps", 1e-6))):
        if float(eps) != 1e-5:
            cfg["norm_kwargs"] = {"eps": float(eps)}
    model_cfg = {"embed_dim": int(img["head"]["kernel"].shape[1]), "vision_cfg": vision, "text_cfg": text,
                 "quick_gelu": f.get("act") == "quick_gelu"}
    if "b" in model.params:
        model_cfg["init_logit_bias"] = float(model.params["b"])
    mean, std = f.get("pixel_mean") or (0.5, 0.5, 0.5), f.get("pixel_std") or (0.5, 0.5, 0.5)
    config = {"model_cfg": model_cfg, "preprocess_cfg": {"mean": list(mean), "std": list(std)}}
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    safetensors_io.write(folder / WEIGHTS, tensors, {"format": "pt"})
    (folder / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return folder
