"""HF transformers checkpoints (`config.json` + `model.safetensors`): CLIPModel, SiglipModel and Siglip2Model
(NaFlex) in and out."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from vlm_jax.interop import layout, posemb, safetensors_io
from vlm_jax.interop.layout import ConversionError, Imported, Source, Tree

ACTS = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh"}
HF_ACT = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh"}
# transformers' defaults for keys a saved config may leave out
CLIP_VISION = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                   num_channels=3, image_size=224, patch_size=32, hidden_act="quick_gelu", layer_norm_eps=1e-5)
CLIP_TEXT = dict(vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                 num_attention_heads=8, max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5,
                 pad_token_id=1, bos_token_id=49406, eos_token_id=49407)
SIGLIP_VISION = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                     num_channels=3, image_size=224, patch_size=16, hidden_act="gelu_pytorch_tanh",
                     layer_norm_eps=1e-6, vision_use_head=True)
SIGLIP_TEXT = dict(vocab_size=32000, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                   num_attention_heads=12, max_position_embeddings=64, hidden_act="gelu_pytorch_tanh",
                   layer_norm_eps=1e-6, pad_token_id=1, bos_token_id=49406, eos_token_id=49407)
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
SIGLIP2_VISION = {k: v for k, v in SIGLIP_VISION.items() if k != "image_size"} | dict(num_patches=256)
KINDS = {"clip": "CLIPModel", "siglip": "SiglipModel", "siglip2": "Siglip2Model"}


def _act(cfg: dict[str, Any], where: str) -> str:
    act = cfg["hidden_act"]
    if act not in ACTS:
        raise ConversionError(f"{where}: hidden_act {act!r} is not supported (known: {sorted(ACTS)})")
    return ACTS[act]


def _tower_cfg(config: dict[str, Any], key: str, defaults: dict[str, Any]) -> dict[str, Any]:
    return {**defaults, **config.get(key, {})}


def _preprocessor(folder: Path, default_mean: tuple, default_std: tuple) -> tuple[tuple, tuple]:
    """(mean, std) from preprocessor_config.json when the checkpoint has one, else the model family's."""
    path = folder / "preprocessor_config.json"
    if path.exists():
        cfg = json.loads(path.read_text())
        return tuple(cfg.get("image_mean", default_mean)), tuple(cfg.get("image_std", default_std))
    return default_mean, default_std


def read(folder: str | Path, image_size: int | None = None) -> Imported:
    """An HF CLIPModel or SiglipModel folder as vlm_jax TwoTower fields and parameters; `image_size` other than the
    checkpoint's resizes the position embeddings as transformers' `interpolate_pos_encoding` does."""
    folder = Path(folder)
    if not (folder / "config.json").exists():
        raise ConversionError(f"{folder}: no config.json (an HF transformers checkpoint folder has config.json and "
                              f"model.safetensors)")
    config = json.loads((folder / "config.json").read_text())
    kind = config.get("model_type")
    if kind not in KINDS:
        raise ConversionError(f"{folder}: model_type {kind!r} is not supported; supported: "
                              f"{', '.join(f'{k} ({v})' for k, v in KINDS.items())}")
    weights = folder / "model.safetensors"
    if not weights.exists():
        raise ConversionError(f"{folder}: no model.safetensors (sharded or .bin checkpoints are not supported)")
    src = Source(safetensors_io.read(weights), str(weights))
    if kind == "clip":
        out = _read_clip(src, config, folder, image_size)
    else:
        out = _read_siglip(src, config, folder, image_size, naflex=kind == "siglip2")
    src.finish(ignore=lambda k: k.endswith("position_ids"))  # a buffer some transformers versions save
    return out


def _vision_common(src: Source, v: dict[str, Any], cls: bool, image_size: int | None) -> tuple[Tree, dict, int]:
    """Patch embedding, position embedding (resized when asked), blocks; returns (params, fields, image size)."""
    d, p, size = v["hidden_size"], v["patch_size"], v["image_size"]
    grid = size // p
    pre = "vision_model."
    params: Tree = {"embedding": {"kernel": layout.conv(src.take(pre + "embeddings.patch_embedding.weight",
                                                                  (d, v["num_channels"], p, p)))}}
    bias_name = pre + "embeddings.patch_embedding.bias"
    params["embedding"]["bias"] = src.take(bias_name, (d,)) if bias_name in src else np.zeros(d, np.float32)
    pos = src.take(pre + "embeddings.position_embedding.weight", (grid * grid + int(cls), d))
    if cls:
        params["cls"] = (src.take(pre + "embeddings.class_embedding", (d,)) + pos[0])[None, None]
        pos = pos[1:]
    new_size = image_size or size
    if new_size % p:
        raise ConversionError(f"image_size {new_size} is not a multiple of the patch size {p}")
    if new_size != size:
        pos = posemb.resize_grid(pos.reshape(grid, grid, d), (new_size // p, new_size // p), antialias=False)
    params["pos_embedding"] = pos.reshape(1, -1, d)
    params["Transformer"] = layout.encoder_in(src, pre + "encoder.layers.", v["num_hidden_layers"], d,
                                              v["intermediate_size"], v["num_attention_heads"], layout.HF_BLOCK)
    params["Transformer"]["encoder_norm"] = layout.norm(src.take(pre + "post_layernorm.weight", (d,)),
                                                        src.take(pre + "post_layernorm.bias", (d,)))
    fields = dict(width=d, depth=v["num_hidden_layers"], mlp_dim=v["intermediate_size"],
                  num_heads=v["num_attention_heads"], patch_size=(p, p), posemb="learn",
                  act=_act(v, "vision_config"), ln_eps=float(v["layer_norm_eps"]))
    return params, fields, new_size


def _text_common(src: Source, t: dict[str, Any]) -> tuple[Tree, dict]:
    d, pre = t["hidden_size"], "text_model."
    params: Tree = {
        "embedding": {"embedding": src.take(pre + "embeddings.token_embedding.weight", (t["vocab_size"], d))},
        "pos_embedding": src.take(pre + "embeddings.position_embedding.weight",
                                  (t["max_position_embeddings"], d))[None],
        "Encoder_0": layout.encoder_in(src, pre + "encoder.layers.", t["num_hidden_layers"], d,
                                       t["intermediate_size"], t["num_attention_heads"], layout.HF_BLOCK)}
    params["Encoder_0"]["encoder_norm"] = layout.norm(src.take(pre + "final_layer_norm.weight", (d,)),
                                                      src.take(pre + "final_layer_norm.bias", (d,)))
    fields = dict(vocab_size=t["vocab_size"], width=d, depth=t["num_hidden_layers"], mlp_dim=t["intermediate_size"],
                  num_heads=t["num_attention_heads"], max_len=t["max_position_embeddings"],
                  act=_act(t, "text_config"), ln_eps=float(t["layer_norm_eps"]), pad_mask=False,
                  pad_id=int(t["pad_token_id"] if t.get("pad_token_id") is not None else 0))
    return params, fields


def _read_clip(src: Source, config: dict, folder: Path, image_size: int | None) -> Imported:
    v, t = _tower_cfg(config, "vision_config", CLIP_VISION), _tower_cfg(config, "text_config", CLIP_TEXT)
    proj = int(config.get("projection_dim", 512))
    img, img_fields, size = _vision_common(src, v, cls=True, image_size=image_size)
    d = v["hidden_size"]
    img["ln_pre"] = layout.norm(src.take("vision_model.pre_layrnorm.weight", (d,)),
                                src.take("vision_model.pre_layrnorm.bias", (d,)))
    img["head"] = layout.dense(src.take("visual_projection.weight", (proj, d)))
    mean, std = _preprocessor(folder, OPENAI_MEAN, OPENAI_STD)
    img_fields.update(pool_type="tok", ln_pre=True, head_bias=False, pixel_mean=mean, pixel_std=std)
    txt, txt_fields = _text_common(src, t)
    txt["head"] = layout.dense(src.take("text_projection.weight", (proj, t["hidden_size"])))
    eos = int(t["eos_token_id"])
    # transformers pools at the highest id for the original configs whose eos_token_id is 2, else at the first eos
    txt_fields.update(causal=True, head_bias=False, **(dict(pool_type="argmax") if eos == 2 else
                                                       dict(pool_type="eos", eos_id=eos)))
    params = {"img": img, "txt": txt, "t": src.take("logit_scale").reshape(())}
    fields = dict(image=img_fields, text=txt_fields, embed_dim=proj, text_tower="transformer")
    return Imported(fields, params, size, _text_info(t), "clip", "hf:CLIPModel")


def _naflex_vision(src: Source, v: dict[str, Any], image_size: int | None) -> tuple[Tree, dict, int]:
    """Siglip2's NaFlex embeddings: a Linear patch embedding over (row, column, channel) pixels (the ViT's
    convolution kernel, reshaped) and a G×G position grid resized per image (ViT `posemb_grid`). The image size
    is the grid's (G·patch): a square image of that size is the fixed-resolution case."""
    d, p, n = v["hidden_size"], v["patch_size"], v["num_patches"]
    g = int(round(n ** 0.5))
    if g * g != n:
        raise ConversionError(f"Siglip2 num_patches {n} is not a square grid")
    pre = "vision_model."
    w = src.take(pre + "embeddings.patch_embedding.weight", (d, p * p * v["num_channels"]))
    params: Tree = {"embedding": {"kernel": np.ascontiguousarray(w.T.reshape(p, p, v["num_channels"], d)),
                                 "bias": src.take(pre + "embeddings.patch_embedding.bias", (d,))},
                    "pos_embedding": src.take(pre + "embeddings.position_embedding.weight", (n, d))[None]}
    params["Transformer"] = layout.encoder_in(src, pre + "encoder.layers.", v["num_hidden_layers"], d,
                                              v["intermediate_size"], v["num_attention_heads"], layout.HF_BLOCK)
    params["Transformer"]["encoder_norm"] = layout.norm(src.take(pre + "post_layernorm.weight", (d,)),
                                                        src.take(pre + "post_layernorm.bias", (d,)))
    fields = dict(width=d, depth=v["num_hidden_layers"], mlp_dim=v["intermediate_size"],
                  num_heads=v["num_attention_heads"], patch_size=(p, p), posemb="learn", posemb_grid=g,
                  act=_act(v, "vision_config"), ln_eps=float(v["layer_norm_eps"]))
    size = image_size or g * p
    if size % p:
        raise ConversionError(f"image_size {size} is not a multiple of the patch size {p}")
    return params, fields, size


def _read_siglip(src: Source, config: dict, folder: Path, image_size: int | None, naflex: bool = False) -> Imported:
    v = _tower_cfg(config, "vision_config", SIGLIP2_VISION if naflex else SIGLIP_VISION)
    t = _tower_cfg(config, "text_config", SIGLIP_TEXT)
    if not v.get("vision_use_head", True):
        raise ConversionError("SigLIP with vision_use_head=False has no pooled image embedding; not supported")
    if naflex:
        img, img_fields, size = _naflex_vision(src, v, image_size)
    else:
        img, img_fields, size = _vision_common(src, v, cls=False, image_size=image_size)
    d, mlp, pre = v["hidden_size"], v["intermediate_size"], "vision_model.head."
    qkv = layout.split_in_proj(src.take(pre + "attention.in_proj_weight", (3 * d, d)),
                               src.take(pre + "attention.in_proj_bias", (3 * d,)))
    out = (src.take(pre + "attention.out_proj.weight", (d, d)), src.take(pre + "attention.out_proj.bias", (d,)))
    img["MAPHead_0"] = {
        "probe": src.take(pre + "probe", (1, 1, d)),
        "attn": layout.attention(*qkv, out, v["num_attention_heads"]),
        "ln": layout.norm(src.take(pre + "layernorm.weight", (d,)), src.take(pre + "layernorm.bias", (d,))),
        "mlp": {"Dense_0": layout.dense(src.take(pre + "mlp.fc1.weight", (mlp, d)), src.take(pre + "mlp.fc1.bias", (mlp,))),
                "Dense_1": layout.dense(src.take(pre + "mlp.fc2.weight", (d, mlp)), src.take(pre + "mlp.fc2.bias", (d,)))}}
    mean, std = _preprocessor(folder, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    img_fields.update(pool_type="map", num_classes=None, pixel_mean=mean, pixel_std=std)
    txt, txt_fields = _text_common(src, t)
    proj = int(t.get("projection_size") or t["hidden_size"])
    if proj != d:
        raise ConversionError(f"SigLIP text projection_size {proj} differs from the vision width {d}: the image "
                              f"embedding (the pooling head's output, {d}-d) and the text embedding would differ")
    txt["head"] = layout.dense(src.take("text_model.head.weight", (proj, t["hidden_size"])),
                               src.take("text_model.head.bias", (proj,)))
    txt_fields.update(causal=False, pool_type="final")
    params = {"img": img, "txt": txt, "t": src.take("logit_scale", (1,)).reshape(()),
              "b": src.take("logit_bias", (1,)).reshape(())}
    fields = dict(image=img_fields, text=txt_fields, embed_dim=proj, text_tower="transformer", bias_init=-10.0)
    return Imported(fields, params, size, _text_info(t), "siglip", "hf:Siglip2Model" if naflex else "hf:SiglipModel")


def _text_info(t: dict[str, Any]) -> dict[str, Any]:
    return dict(max_len=t["max_position_embeddings"], vocab_size=t["vocab_size"], pad_id=t.get("pad_token_id"),
                eos_id=t.get("eos_token_id"), bos_id=t.get("bos_token_id"))


# ------------------------------------------------------------------------------------------ export

def write(model: Imported, folder: str | Path) -> Path:
    """Writes `model` as an HF CLIPModel (softmax loss) or SiglipModel (sigmoid loss) folder: config.json,
    model.safetensors and preprocessor_config.json. Raises when the architecture has no exact HF counterpart."""
    model = layout.for_export(model)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors, config = (_write_clip if model.loss == "clip" else _write_siglip)(model)
    safetensors_io.write(folder / "model.safetensors", tensors, {"format": "pt"})
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    img = model.fields["image"]
    mean, std = img.get("pixel_mean") or (0.5, 0.5, 0.5), img.get("pixel_std") or (0.5, 0.5, 0.5)
    pre = {"image_processor_type": "CLIPImageProcessor" if model.loss == "clip" else "SiglipImageProcessor",
           "image_mean": list(mean), "image_std": list(std), "do_normalize": True, "do_rescale": True,
           "rescale_factor": 1 / 255, "do_resize": True, "resample": 3,
           "size": {"height": model.image_size, "width": model.image_size}}
    if img.get("posemb_grid"):  # Siglip2's processor: native aspect ratio within a patch budget, bilinear
        grid = int(img["posemb_grid"])
        pre = {k: v for k, v in pre.items() if k != "size"} | dict(
            image_processor_type="Siglip2ImageProcessor", resample=2, patch_size=int(img["patch_size"][0]),
            max_num_patches=grid * grid)
    (folder / "preprocessor_config.json").write_text(json.dumps(pre, indent=2, sort_keys=True) + "\n")
    return folder


def _vision_out(img: Tree, f: dict[str, Any], cls: bool, size: int, target: str) -> tuple[dict, dict]:
    layout.require(f, "posemb", ("learn",), target)
    d = img["pos_embedding"].shape[-1]
    p = tuple(f["patch_size"])
    if p[0] != p[1]:
        raise ConversionError(f"{target} needs square patches, got {p}")
    pos = img["pos_embedding"][0]
    bias = img["embedding"]["bias"]
    out = {"vision_model.embeddings.patch_embedding.weight": layout.torch_conv(img["embedding"]["kernel"])}
    if cls:  # no patch bias in CLIP: fold it into the patch positions (exact whenever the bias is 0)
        if np.any(bias != 0):
            pos = pos + bias
        out["vision_model.embeddings.class_embedding"] = img["cls"].reshape(d)
        pos = np.concatenate([np.zeros((1, d), np.float32), pos])
    else:
        out["vision_model.embeddings.patch_embedding.bias"] = bias
    out["vision_model.embeddings.position_embedding.weight"] = pos
    out.update(layout.encoder_out(img["Transformer"], "vision_model.encoder.layers.", layout.HF_BLOCK))
    norm = img["Transformer"]["encoder_norm"]
    out["vision_model.post_layernorm.weight"], out["vision_model.post_layernorm.bias"] = norm["scale"], norm["bias"]
    cfg = dict(hidden_size=d, intermediate_size=img["Transformer"]["encoderblock_0"]["mlp"]["Dense_0"]["kernel"].shape[1],
               num_hidden_layers=layout.vit_depth(img["Transformer"]), num_attention_heads=_heads(img["Transformer"]),
               num_channels=3, image_size=size, patch_size=p[0], hidden_act=HF_ACT[f.get("act", "gelu_tanh")],
               layer_norm_eps=float(f.get("ln_eps", 1e-6)))
    return out, cfg


def _heads(enc: Tree) -> int:
    return int(enc["encoderblock_0"]["attn"]["query_kernel"].shape[1])


def _text_out(txt: Tree, f: dict[str, Any], info: dict[str, Any]) -> tuple[dict, dict]:
    out = {"text_model.embeddings.token_embedding.weight": txt["embedding"]["embedding"],
           "text_model.embeddings.position_embedding.weight": txt["pos_embedding"][0]}
    out.update(layout.encoder_out(txt["Encoder_0"], "text_model.encoder.layers.", layout.HF_BLOCK))
    norm = txt["Encoder_0"]["encoder_norm"]
    out["text_model.final_layer_norm.weight"], out["text_model.final_layer_norm.bias"] = norm["scale"], norm["bias"]
    vocab, d = txt["embedding"]["embedding"].shape
    cfg = dict(vocab_size=vocab, hidden_size=d, num_hidden_layers=layout.vit_depth(txt["Encoder_0"]),
               intermediate_size=txt["Encoder_0"]["encoderblock_0"]["mlp"]["Dense_0"]["kernel"].shape[1],
               num_attention_heads=_heads(txt["Encoder_0"]), max_position_embeddings=txt["pos_embedding"].shape[1],
               hidden_act=HF_ACT[f.get("act", "gelu_tanh")], layer_norm_eps=float(f.get("ln_eps", 1e-6)),
               pad_token_id=info.get("pad_id"), bos_token_id=info.get("bos_id"), eos_token_id=info.get("eos_id"))
    return out, cfg


def _write_clip(model: Imported) -> tuple[dict, dict]:
    f, t = model.fields["image"], model.fields["text"]
    target = "HF CLIPModel"
    layout.require(f, "pool_type", ("tok",), target)
    layout.require(f, "ln_pre", (True,), target)
    layout.require(t, "causal", (True,), target)
    layout.require(t, "pad_mask", (False,), target)
    layout.require(t, "pool_type", ("eos", "argmax"), target)
    for side, tower in (("image", f), ("text", t)):
        if tower.get("head_bias", True):
            raise ConversionError(f"{target} projections have no bias: the {side} tower needs head_bias=False")
    info = dict(model.text)
    if t["pool_type"] == "argmax":
        info["eos_id"] = 2  # transformers pools at the highest id exactly when eos_token_id is 2
    elif t.get("eos_id") == 2:
        raise ConversionError(f"{target} would pool at the highest id for eos_token_id 2; this model pools at eos")
    else:
        info["eos_id"] = t["eos_id"]
    img, txt = model.params["img"], model.params["txt"]
    tensors, vcfg = _vision_out(img, f, True, model.image_size, target)
    pre = img["ln_pre"]
    tensors["vision_model.pre_layrnorm.weight"], tensors["vision_model.pre_layrnorm.bias"] = pre["scale"], pre["bias"]
    tensors["visual_projection.weight"] = layout.torch_linear(img["head"]["kernel"])
    ttensors, tcfg = _text_out(txt, t, info)
    tensors.update(ttensors)
    tensors["text_projection.weight"] = layout.torch_linear(txt["head"]["kernel"])
    tensors["logit_scale"] = np.asarray(model.params["t"], np.float32).reshape(())
    proj = int(img["head"]["kernel"].shape[1])
    config = {"architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": proj,
              "vision_config": {**vcfg, "model_type": "clip_vision_model", "projection_dim": proj},
              "text_config": {**tcfg, "model_type": "clip_text_model", "projection_dim": proj},
              "logit_scale_init_value": float(model.params["t"]), "torch_dtype": "float32"}
    return tensors, config


def _write_siglip(model: Imported) -> tuple[dict, dict]:
    f, t = model.fields["image"], model.fields["text"]
    target = "HF SiglipModel"
    layout.require(f, "pool_type", ("map",), target)
    layout.require(f, "ln_pre", (False, None), target)
    layout.require(f, "num_classes", (None,), target)
    layout.require(t, "causal", (False,), target)
    layout.require(t, "pad_mask", (False,), target)
    layout.require(t, "pool_type", ("final",), target)
    layout.require(t, "head_bias", (True, None), target)
    if "b" not in model.params:
        raise ConversionError(f"{target} needs a logit bias (a sigmoid-loss model)")
    img, txt = model.params["img"], model.params["txt"]
    tensors, vcfg = _vision_out(img, f, False, model.image_size, target)
    naflex = bool(f.get("posemb_grid"))
    if naflex:  # Siglip2Model: a Linear patch embedding and the G×G table (num_patches) instead of image_size
        kernel = img["embedding"]["kernel"]
        tensors["vision_model.embeddings.patch_embedding.weight"] = np.ascontiguousarray(
            kernel.reshape(-1, kernel.shape[-1]).T)
        grid = int(f["posemb_grid"])
        if img["pos_embedding"].shape[1] != grid * grid:
            raise ConversionError(f"HF Siglip2Model: position table of {img['pos_embedding'].shape[1]} entries is "
                                  f"not the {grid}x{grid} grid posemb_grid names")
        vcfg = {k: v for k, v in vcfg.items() if k != "image_size"} | {"num_patches": grid * grid}
    head, pre = img["MAPHead_0"], "vision_model.head."
    tensors[pre + "probe"] = head["probe"]
    att = layout.attention_out(head["attn"], pre + "attention.", fused=True)
    tensors.update(att)
    tensors[pre + "layernorm.weight"], tensors[pre + "layernorm.bias"] = head["ln"]["scale"], head["ln"]["bias"]
    for ours, theirs in (("Dense_0", "fc1"), ("Dense_1", "fc2")):
        tensors[f"{pre}mlp.{theirs}.weight"] = layout.torch_linear(head["mlp"][ours]["kernel"])
        tensors[f"{pre}mlp.{theirs}.bias"] = head["mlp"][ours]["bias"]
    ttensors, tcfg = _text_out(txt, t, model.text)
    tensors.update(ttensors)
    tensors["text_model.head.weight"] = layout.torch_linear(txt["head"]["kernel"])
    tensors["text_model.head.bias"] = txt["head"]["bias"]
    tensors["logit_scale"] = np.asarray(model.params["t"], np.float32).reshape(1)
    tensors["logit_bias"] = np.asarray(model.params["b"], np.float32).reshape(1)
    kind = "siglip2" if naflex else "siglip"
    config = {"architectures": ["Siglip2Model" if naflex else "SiglipModel"], "model_type": kind,
              "vision_config": {**vcfg, "model_type": f"{kind}_vision_model", "vision_use_head": True},
              "text_config": {**tcfg, "model_type": f"{kind}_text_model",
                              "projection_size": int(txt["head"]["kernel"].shape[1])}, "torch_dtype": "float32"}
    return tensors, config
