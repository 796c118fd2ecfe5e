"""Tiny random reference checkpoints (HF CLIP, SigLIP, SigLIP 2; open_clip CLIP and SigLIP) and their outputs, for converter tests.

Writes, under --out (normally tests/fixtures/weights):

  hf_clip/         config.json + model.safetensors        (transformers CLIPModel.save_pretrained)
  hf_siglip/       config.json + model.safetensors        (transformers SiglipModel.save_pretrained)
  open_clip_clip/  open_clip_config.json + open_clip_model.safetensors
                   (open_clip's own save_config_for_hf layout; state_dict through safetensors.torch.save_file,
                   as open_clip.push_to_hf_hub.save_for_hf does)
  hf_siglip2/      config.json + model.safetensors + preprocessor_config.json (transformers Siglip2Model, NaFlex),
                   with NaFlex inputs of several aspect ratios from the library's processors
  open_clip_siglip/ the same files for open_clip's SigLIP layout (CustomTextCLIP, timm MAP trunk; see
                   OPEN_CLIP_SIGLIP_CFG), with SigLIP's SentencePiece files and open_clip's canonicalised ids
  <case>/reference.npz   inputs and the torch outputs on them (float32 / int32 arrays, keys below)
  <case>/ tokenizer files and tokenizer.json's reference ids (see TOKENIZERS below): HF CLIP's fast tokenizer over
                   a 1000-id cut of OpenAI CLIP's BPE (open_clip's bpe_simple_vocab_16e6.txt.gz, its first 486
                   merges), open_clip's SimpleTokenizer over the same cut (bpe_simple_vocab.txt.gz), SigLIP's
                   SentencePiece tokenizer (spiece.model, a 1000-piece unigram model trained on CORPUS here)
  big_vision_siglip/     siglip.npz (per-layer) and siglip_scanned.npz (scanned): the hf_siglip weights in big_vision's
                   SigLIP layout (BIG_VISION_LAYOUT below); its reference numbers are hf_siglip's
  fixtures.json          library versions, the command, per case its files (bytes, sha256) and array shapes

Every parameter (LayerNorm scales and biases, all biases, embeddings, logit_scale / logit_bias included) is
perturbed with seeded noise before saving, so a converter that transposes or swaps tensors gives wrong outputs.
Outputs come from the checkpoint as saved (reloaded through the library's own loader), float32 on CPU, no grad,
deterministic algorithms, one thread. Running it twice gives byte-identical files (the npz is written with a
fixed zip timestamp).

reference.npz keys (N=4 images / texts, 16 tokens):
  image [4,32,32,3] NHWC in [-1, 1] (the codebase's x/127.5-1), mean [3], std [3],
  pixel_values [4,3,32,32] = transpose(((image + 1) / 2 - mean) / std), what torch was fed,
  input_ids [4,16] int32, image_embeds / text_embeds (projected, NOT normalised), logits_per_image [4,4],
  image_48 [2,48,48,3], pixel_values_48, image_embeds_48 (position embeddings resized the library's way),
  pos_embed_48 (the resized position table the library used), and for the HF cases vision_hidden / text_hidden
  (the towers' last_hidden_state; see "notes" in fixtures.json for where the final LayerNorm sits).

Needs the optional benchmark venv (torch, open_clip_torch, transformers, safetensors; see
benchmarks/requirements-open-clip.txt). Standalone: imports nothing from vlm_jax. Command:

  .bench-venv/bin/python scripts/make_weight_fixtures.py --out tests/fixtures/weights
"""
import argparse
import hashlib
import io
import json
import math
import os
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np

COMMAND_PREFIX = ".bench-venv/bin/python scripts/make_weight_fixtures.py"
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)
N, SIZE, SIZE_48, N_48, CTX = 4, 32, 48, 2, 16
VOCAB, BOS, EOS = 1000, 998, 999
NOISE = 0.05
SEEDS = {"hf_clip": 1, "hf_siglip": 2, "open_clip_clip": 3, "open_clip_siglip": 4, "hf_siglip2": 5}
# NaFlex inputs of the hf_siglip2 case: images of several aspect ratios (height, width), a patch budget of 20
NAFLEX_SHAPES, NAFLEX_BUDGET = ((24, 40), (56, 12), (32, 32), (9, 70)), 20
PERTURBATION = (f"every parameter += {NOISE} * randn after the library's init; logit_scale = log(1/0.07) + 0.1 * randn "
                "(CLIP cases) or log(10) + 0.1 * randn (SigLIP), SigLIP logit_bias = -10 + 0.5 * randn")

OPEN_CLIP_CFG = {
    "embed_dim": 24,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 8, "mlp_ratio": 2.0, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 1000, "width": 32, "heads": 4, "layers": 2},
    "quick_gelu": False,
}

# open_clip's SigLIP layout (CustomTextCLIP: a timm image trunk with a MAP head, a bidirectional text transformer
# pooled at the final position with a biased projection), as open_clip's ViT-B-16-SigLIP2 config, shrunk. timm
# builds the trunk by name; TIMM_TINY are the constructor overrides that shrink the named model (timm's own
# `model_args` merge lets keyword arguments replace them), keeping its 12 heads.
OPEN_CLIP_SIGLIP_TIMM = "vit_base_patch16_siglip_224"
TIMM_TINY = dict(embed_dim=48, depth=2, num_heads=12, mlp_ratio=2.0, patch_size=8)
OPEN_CLIP_SIGLIP_CFG = {
    "embed_dim": 48, "init_logit_bias": -10, "custom_text": True,
    "vision_cfg": {"image_size": 32, "timm_model_name": OPEN_CLIP_SIGLIP_TIMM, "timm_model_pretrained": False,
                   "timm_pool": "map", "timm_proj": "none"},
    "text_cfg": {"context_length": 16, "vocab_size": 1000, "hf_tokenizer_name": "timm/ViT-B-16-SigLIP2",
                 "tokenizer_kwargs": {"clean": "canonicalize"}, "width": 32, "heads": 4, "layers": 2,
                 "mlp_ratio": 2.0, "no_causal_mask": True, "proj_bias": True, "pool_type": "last",
                 "norm_kwargs": {"eps": 1e-6}, "act_kwargs": {"approximate": "tanh"}},
}

# Strings with punctuation, casing, accents, non-Latin scripts, HTML entities, emoji, an empty and an over-long text.
TOKEN_TEXTS = [
    "A photo of a cat.", "  Hello,   WORLD!!  ", "naïve café — déjà vu", "日本語のテキストと한국어",
    "Ünïcödé &amp; <b>tags</b>", "emoji 🐱🚀 time", "", "it's a dog's life; isn't it?", "numbers 12345 and 3.14",
    "a very long caption that goes on and on about many different things well past the sixteen token limit",
    "Mixed CASE and under_scores and hyphen-ated words", "tab\tand\nnewline",
]
CORPUS = [  # SigLIP's SentencePiece training text (deterministic): the strings above and plain English sentences
    *TOKEN_TEXTS, "a photo of a dog", "a picture of the sea", "the quick brown fox jumps over the lazy dog",
    "an emoji of a smiling face", "two people riding bicycles in the city", "a bowl of fruit on a table",
] * 20
TOKENIZERS = (
    "hf_clip: CLIPTokenizer(vocab.json, merges.txt).save_pretrained -> tokenizer.json etc.; token_ids = "
    "tok(TOKEN_TEXTS, padding='max_length', truncation=True, max_length=16).input_ids. open_clip_clip: "
    "open_clip.tokenizer.SimpleTokenizer(bpe_path=bpe_simple_vocab.txt.gz, context_length=16)(TOKEN_TEXTS). "
    "hf_siglip: SiglipTokenizer(spiece.model).save_pretrained; token_ids = tok(TOKEN_TEXTS, padding='max_length', "
    "truncation=True, max_length=16).input_ids. token_texts.json lists TOKEN_TEXTS.")
BPE_MERGES = 486  # 256 bytes + 256 bytes</w> + 486 merges + 2 specials = the fixtures' 1000-id vocabulary

NOTES = {
    "hf_clip": (
        "image_embeds/text_embeds = get_image_features/get_text_features(...).pooler_output (transformers 5 returns "
        "BaseModelOutputWithPooling; pooler_output is already projected). vision_hidden = vision encoder output "
        "BEFORE post_layernorm (CLIP applies post_layernorm to the class token only); text_hidden = after "
        "final_layer_norm. Text pooling: first position of eos_token_id 999. image_embeds_48: "
        "interpolate_pos_encoding=True (class position kept, 4x4 patch grid -> 6x6 by F.interpolate size=(6,6), "
        "bicubic, align_corners=False, no antialias). Computed with the default attention (sdpa); eager differs "
        "by < 1e-5."),
    "hf_siglip": (
        "image_embeds = get_image_features(...).pooler_output (attention-pooling head output, no projection); "
        "text_embeds = get_text_features(...).pooler_output = head(last_hidden_state[:, -1]) (the LAST position, "
        "a pad token for short rows). vision_hidden = after post_layernorm (the input of the pooling head); "
        "text_hidden = after final_layer_norm. logits_per_image = exp(logit_scale) * cos + logit_bias. "
        "image_embeds_48: interpolate_pos_encoding=True (no class token, 4x4 -> 6x6 by F.interpolate size=(6,6), "
        "bicubic, align_corners=False, no antialias). Computed with the default attention (sdpa); eager differs "
        "by < 1e-5."),
    "open_clip_clip": (
        "image_embeds = encode_image(x, normalize=False), text_embeds = encode_text(ids, normalize=False) (pooling: "
        "argmax of token ids, i.e. the EOT 999). logits_per_image = exp(logit_scale) * normalised img @ normalised "
        "txt.T (no logit_bias). image_embeds_48: open_clip.create_model('local-dir:<this dir>', "
        "force_image_size=48), whose load_checkpoint calls open_clip.model.resize_pos_embed: class position kept, "
        "4x4 -> 6x6 by F.interpolate size=(6,6), bicubic, align_corners=False, antialias=True. NOT the same as the "
        "HF resize even when upsampling: torch's antialiased bicubic is PIL's (cubic a=-0.5, taps outside the grid "
        "dropped and the weights renormalised), the plain one is a=-0.75 with edge clamping."),
    "open_clip_siglip": (
        "open_clip CustomTextCLIP from OPEN_CLIP_SIGLIP_CFG with timm.create_model given TIMM_TINY (and img_size) "
        "while building. image_embeds = encode_image(x, normalize=False) (the timm trunk's MAP head output, "
        "timm_proj none); text_embeds = encode_text(ids, normalize=False) (pool_type 'last' = the final position, a "
        "pad for short rows, then a Linear with bias). Image tower: exact GELU (timm's default for this name), "
        "LayerNorm eps 1e-6; text tower: tanh GELU (act_kwargs), eps 1e-6. logits_per_image = exp(logit_scale) * "
        "cos + logit_bias. image_embeds_48 / pos_embed_48: the trunk built at img_size=48 with its pos_embed "
        "resampled by timm.layers.resample_abs_pos_embed((6, 6), num_prefix_tokens=0) (timm's default: bicubic, "
        "antialias=True), as timm's checkpoint filter does. token_ids: open_clip.tokenizer.HFTokenizer(<this dir>, "
        "context_length=16, clean='canonicalize') over the hf_siglip SentencePiece files copied here."),
    "hf_siglip2": (
        "transformers Siglip2Model (NaFlex: Linear patch embedding over patches in (row, column, channel) order, a "
        "4x4 learned position grid resized per image). image_<i> uint8 [h, w, 3] of NAFLEX_SHAPES; pixel_values / "
        "pixel_attention_mask / spatial_shapes from Siglip2ImageProcessor(patch_size=8, max_num_patches=20) "
        "(torchvision backend); pixel_values_pil etc. from the PIL backend (Siglip2ImageProcessorPil). "
        "image_embeds = get_image_features(...).pooler_output (MAP head over real patches), text_embeds as "
        "hf_siglip, logits_per_image = exp(logit_scale) * cos + logit_bias. pos_embed_resized [N, 20, 32]: per "
        "image, F.interpolate(grid [1, d, 4, 4], size=spatial_shape, mode='bilinear', align_corners=False, "
        "antialias=True), flattened row-major, zero beyond h*w (checked against transformers' own "
        "resize_positional_embeddings to 1e-6 on the real rows). size_rule [K, 6]: (height, width, patch, budget, "
        "target height, target width) from transformers' get_image_size_for_max_num_patches."),
}


# ----------------------------------------------------------------------------------------------- inputs

def make_images(rng, n, size):
    return rng.uniform(-1.0, 1.0, size=(n, size, size, 3)).astype(np.float32)


def to_pixel_values(image, mean, std):
    """NHWC in [-1, 1] -> NCHW normalised, in float32 numpy (what torch is fed)."""
    mean = np.asarray(mean, np.float32)
    std = np.asarray(std, np.float32)
    x = ((image + np.float32(1)) / np.float32(2) - mean) / std
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)).astype(np.float32)


def clip_input_ids(rng):
    """BOS, random ids in [0, 997], EOS, 0-padding. Row 0 has a 0 inside the text; row 1 is exactly 16 long."""
    lengths = [5, CTX - 2, 2, 12]  # content tokens between BOS and EOS
    ids = np.zeros((N, CTX), np.int32)
    for i, n in enumerate(lengths):
        content = rng.integers(1, BOS, size=n)  # in [1, 997]
        if i == 0:
            content[n // 2] = 0  # a 0 in the middle of the text, not padding
        row = [BOS, *content.tolist(), EOS]
        ids[i, :len(row)] = row
    assert (ids == EOS).sum(1).tolist() == [1] * N and ids[1, -1] == EOS and ids[0, 1:7].min() == 0
    return ids


def siglip_input_ids(rng, pad_id=1):
    """Random ids in [2, 997], EOS, then pad id 1 to 16 (fixed length, no attention mask); row 1 is exactly 16."""
    lengths = [5, CTX - 1, 2, 10]
    ids = np.full((N, CTX), pad_id, np.int32)
    for i, n in enumerate(lengths):
        row = [*rng.integers(2, BOS, size=n).tolist(), EOS]
        ids[i, :len(row)] = row
    assert (ids == EOS).sum(1).tolist() == [1] * N and ids[1, -1] == EOS
    return ids


# ----------------------------------------------------------------------------------------------- torch helpers

def setup_torch():
    import torch
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    return torch


def perturb_(model, seed, special=None):
    """Add NOISE * randn to every parameter; parameters named in `special` get special(gen) as their value."""
    import torch
    special = special or {}
    gen = torch.Generator().manual_seed(seed)
    names = []
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in special:
                p.fill_(float(special[name](gen)))
            else:
                p.add_(NOISE * torch.randn(p.shape, generator=gen, dtype=p.dtype))
            names.append(name)
    missing = set(special) - set(names)
    assert not missing, f"special parameters not found: {missing}"
    return names


def randn_near(center, scale):
    import torch
    return lambda gen: center + scale * torch.randn((), generator=gen).item()


def features(out):
    """transformers 5 get_*_features return a ModelOutput whose pooler_output is the projected tensor."""
    import torch
    if isinstance(out, torch.Tensor):
        return out, None
    return out.pooler_output, out.last_hidden_state


def np32(t):
    return t.detach().cpu().numpy().astype(np.float32)


# ----------------------------------------------------------------------------------------------- HF cases

def hf_clip_model(torch, seed):
    from transformers import CLIPConfig, CLIPModel
    common = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                  hidden_act="quick_gelu", layer_norm_eps=1e-5)
    # CLIPModel projects with the top-level projection_dim; the towers' own projection_dim (default 512, read only
    # by CLIP*ModelWithProjection) is set to the same 24, as in released checkpoints.
    common["projection_dim"] = 24
    config = CLIPConfig(
        vision_config=dict(common, image_size=SIZE, patch_size=8),
        text_config=dict(common, vocab_size=VOCAB, max_position_embeddings=CTX,
                         bos_token_id=BOS, eos_token_id=EOS, pad_token_id=0),
        projection_dim=24)
    torch.manual_seed(seed)
    model = CLIPModel(config).float().eval()
    perturb_(model, seed + 1000, {"logit_scale": randn_near(math.log(1 / 0.07), 0.1)})
    return model


def hf_siglip_model(torch, seed):
    from transformers import SiglipConfig, SiglipModel, SiglipTextConfig
    common = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                  hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)
    # bos is unused by SigLIP; set inside the 1000-id vocabulary (the default 49406 is outside it).
    text = dict(common, vocab_size=VOCAB, max_position_embeddings=CTX, pad_token_id=1, eos_token_id=EOS,
                bos_token_id=BOS)
    if "projection_size" in SiglipTextConfig(**text).to_dict():
        text["projection_size"] = 32  # = hidden_size, the default; explicit so config.json states it
    config = SiglipConfig(vision_config=dict(common, image_size=SIZE, patch_size=8), text_config=text)
    torch.manual_seed(seed)
    model = SiglipModel(config).float().eval()
    perturb_(model, seed + 1000, {"logit_scale": randn_near(math.log(10.0), 0.1),
                                  "logit_bias": randn_near(-10.0, 0.5)})
    return model


def hf_siglip2_model(torch, seed):
    from transformers import Siglip2Config, Siglip2Model
    common = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                  hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)
    text = dict(common, vocab_size=VOCAB, max_position_embeddings=CTX, pad_token_id=1, eos_token_id=EOS,
                bos_token_id=BOS, projection_size=32)
    config = Siglip2Config(vision_config=dict(common, patch_size=8, num_patches=16), text_config=text)
    torch.manual_seed(seed)
    model = Siglip2Model(config).float().eval()
    perturb_(model, seed + 1000, {"logit_scale": randn_near(math.log(10.0), 0.1),
                                  "logit_bias": randn_near(-10.0, 0.5)})
    return model


def make_hf_siglip2_case(torch, case, folder):
    """NaFlex: images of several aspect ratios through the library's own processors and model."""
    import torch.nn.functional as F
    from transformers.models.siglip2.image_processing_pil_siglip2 import Siglip2ImageProcessorPil
    from transformers.models.siglip2.image_processing_siglip2 import Siglip2ImageProcessor
    seed = SEEDS[case]
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for h, w in NAFLEX_SHAPES]
    ids = siglip_input_ids(rng)
    model = hf_siglip2_model(torch, seed)
    model.save_pretrained(folder)
    reloaded = type(model).from_pretrained(folder).float().eval()
    kw = dict(patch_size=8, max_num_patches=NAFLEX_BUDGET)
    proc = Siglip2ImageProcessor(**kw)
    proc.save_pretrained(folder)
    inputs = proc(images=images, return_tensors="pt")
    pil = Siglip2ImageProcessorPil(**kw)(images=images, return_tensors="pt")
    out = {}
    with torch.no_grad():
        for tag, m in (("ref", reloaded), ("mem", model)):
            img, _ = features(m.get_image_features(**inputs))
            txt, _ = features(m.get_text_features(input_ids=torch.from_numpy(ids).long()))
            logits = m(input_ids=torch.from_numpy(ids).long(), **inputs).logits_per_image
            out[tag] = dict(image_embeds=np32(img), text_embeds=np32(txt), logits_per_image=np32(logits))
        emb = reloaded.vision_model.embeddings
        g = emb.position_embedding_size
        grid = emb.position_embedding.weight.reshape(g, g, -1)
        library = emb.resize_positional_embeddings(grid, inputs["spatial_shapes"], NAFLEX_BUDGET)
        resized = torch.zeros_like(library)
        for i, (h, w) in enumerate(inputs["spatial_shapes"].tolist()):
            r = F.interpolate(grid.permute(2, 0, 1)[None], size=(h, w), mode="bilinear", align_corners=False,
                              antialias=True)[0]
            resized[i, :h * w] = r.reshape(r.shape[0], -1).T
            torch.testing.assert_close(library[i, :h * w], resized[i, :h * w], rtol=1e-6, atol=1e-6)
    for k in out["ref"]:
        np.testing.assert_array_equal(out["ref"][k], out["mem"][k], err_msg=f"{case}/{k} after save/load")
    arrays = {f"image_{i}": im for i, im in enumerate(images)}
    from transformers.models.siglip2.image_processing_siglip2 import get_image_size_for_max_num_patches
    rule = []  # the size rule on many image shapes, patch sizes and budgets: (h, w, patch, budget, th, tw)
    for h, w in [(1, 1), (5, 300), (300, 5), (17, 31), (64, 64), (100, 37), (224, 224), (480, 640), (640, 480),
                 (1000, 999), (33, 2000), (1080, 1920), (31, 7), (256, 256), (8, 8), (120, 16)]:
        for patch in (8, 14, 16):
            for budget in (1, 2, 7, 20, 64, 256, 576, 1024):
                rule.append((h, w, patch, budget, *get_image_size_for_max_num_patches(h, w, patch, budget)))
    arrays["size_rule"] = np.asarray(rule, np.int32)
    arrays.update(input_ids=ids, pixel_values=np32(inputs["pixel_values"]),
                  pixel_attention_mask=inputs["pixel_attention_mask"].numpy().astype(np.int32),
                  spatial_shapes=inputs["spatial_shapes"].numpy().astype(np.int32),
                  pixel_values_pil=np32(pil["pixel_values"]),
                  pixel_attention_mask_pil=pil["pixel_attention_mask"].numpy().astype(np.int32),
                  spatial_shapes_pil=pil["spatial_shapes"].numpy().astype(np.int32),
                  pos_embed_resized=np32(resized), **out["ref"])
    return arrays


def hf_outputs(torch, model, pv, ids, pv48):
    with torch.no_grad():
        pv, ids, pv48 = torch.from_numpy(pv), torch.from_numpy(ids).long(), torch.from_numpy(pv48)
        img, vis_hidden = features(model.get_image_features(pixel_values=pv))
        txt, txt_hidden = features(model.get_text_features(input_ids=ids))
        logits = model(input_ids=ids, pixel_values=pv).logits_per_image
        img48, _ = features(model.get_image_features(pixel_values=pv48, interpolate_pos_encoding=True))
        emb = model.vision_model.embeddings
        patches = emb.patch_embedding(pv48).flatten(2).transpose(1, 2)
        if hasattr(emb, "class_embedding"):  # CLIP: the class token is part of `embeddings`
            patches = torch.cat([patches[:, :1], patches], dim=1)
        pos48 = emb.interpolate_pos_encoding(patches, SIZE_48, SIZE_48)[0]
    out = dict(image_embeds=img, text_embeds=txt, logits_per_image=logits, image_embeds_48=img48,
               pos_embed_48=pos48)
    if vis_hidden is not None:
        out["vision_hidden"] = vis_hidden
    if txt_hidden is not None:
        out["text_hidden"] = txt_hidden
    return {k: np32(v) for k, v in out.items()}


def make_hf_case(torch, case, folder, build, ids_fn, mean, std):
    seed = SEEDS[case]
    rng = np.random.default_rng(seed)
    image, image_48 = make_images(rng, N, SIZE), make_images(rng, N_48, SIZE_48)
    ids = ids_fn(rng)
    pv, pv48 = to_pixel_values(image, mean, std), to_pixel_values(image_48, mean, std)

    model = build(torch, seed)
    model.save_pretrained(folder)
    reloaded = type(model).from_pretrained(folder).float().eval()
    ref = hf_outputs(torch, reloaded, pv, ids, pv48)
    mem = hf_outputs(torch, model, pv, ids, pv48)
    for k in ref:  # the saved checkpoint reproduces the in-memory model exactly
        np.testing.assert_array_equal(ref[k], mem[k], err_msg=f"{case}/{k} after save/load")
    return dict(image=image, mean=np.asarray(mean, np.float32), std=np.asarray(std, np.float32),
                pixel_values=pv, input_ids=ids, image_48=image_48, pixel_values_48=pv48, **ref)


# ----------------------------------------------------------------------------------------------- open_clip case

def open_clip_outputs(torch, model, pv, ids):
    with torch.no_grad():
        pv, ids = torch.from_numpy(pv), torch.from_numpy(ids).long()
        img = model.encode_image(pv, normalize=False)
        txt = model.encode_text(ids, normalize=False)
        logits = model.get_logits(pv, ids)[0]
        manual = model.logit_scale.exp() * torch.nn.functional.normalize(img, dim=-1) @ \
            torch.nn.functional.normalize(txt, dim=-1).T
        if model.logit_bias is not None:  # the SigLIP layout
            manual = manual + model.logit_bias
        torch.testing.assert_close(logits, manual, rtol=1e-6, atol=1e-6)
    return dict(image_embeds=np32(img), text_embeds=np32(txt), logits_per_image=np32(logits))


def make_open_clip_case(torch, case, folder):
    import copy
    import safetensors.torch
    import open_clip
    from open_clip.constants import HF_CONFIG_NAME, HF_SAFE_WEIGHTS_NAME
    from open_clip.model import CLIP, set_model_preprocess_cfg
    from open_clip.push_to_hf_hub import save_config_for_hf

    seed = SEEDS[case]
    rng = np.random.default_rng(seed)
    image, image_48 = make_images(rng, N, SIZE), make_images(rng, N_48, SIZE_48)
    ids = clip_input_ids(rng)
    pv, pv48 = to_pixel_values(image, OPENAI_MEAN, OPENAI_STD), to_pixel_values(image_48, OPENAI_MEAN, OPENAI_STD)

    torch.manual_seed(seed)
    model = CLIP(**copy.deepcopy(OPEN_CLIP_CFG)).float().eval()
    perturb_(model, seed + 1000, {"logit_scale": randn_near(math.log(1 / 0.07), 0.1)})
    set_model_preprocess_cfg(model, {"mean": OPENAI_MEAN, "std": OPENAI_STD})
    # Exactly what open_clip.push_to_hf_hub.save_for_hf writes (minus the tokenizer files).
    os.makedirs(folder, exist_ok=True)
    safetensors.torch.save_file(model.state_dict(), os.path.join(folder, HF_SAFE_WEIGHTS_NAME))
    save_config_for_hf(model, Path(folder) / HF_CONFIG_NAME, model_config=copy.deepcopy(OPEN_CLIP_CFG))

    local = "local-dir:" + os.path.abspath(folder)
    loaded = open_clip.create_model(local, device="cpu", precision="fp32").eval()
    ref = open_clip_outputs(torch, loaded, pv, ids)
    mem = open_clip_outputs(torch, model, pv, ids)
    for k in ref:
        np.testing.assert_array_equal(ref[k], mem[k], err_msg=f"{case}/{k} after save/load")

    model48 = open_clip.create_model(local, device="cpu", precision="fp32", force_image_size=SIZE_48).eval()
    with torch.no_grad():
        img48 = model48.encode_image(torch.from_numpy(pv48), normalize=False)
    return dict(image=image, mean=np.asarray(OPENAI_MEAN, np.float32), std=np.asarray(OPENAI_STD, np.float32),
                pixel_values=pv, input_ids=ids, image_48=image_48, pixel_values_48=pv48, **ref,
                image_embeds_48=np32(img48), pos_embed_48=np32(model48.visual.positional_embedding))


def tiny_timm(extra):
    """A context in which timm.create_model adds TIMM_TINY and `extra` to the named model's arguments."""
    import contextlib
    import timm

    @contextlib.contextmanager
    def patched():
        original = timm.create_model

        def create(name, *args, **kwargs):
            return original(name, *args, **{**kwargs, **TIMM_TINY, **extra})
        timm.create_model = create
        try:
            yield
        finally:
            timm.create_model = original
    return patched()


def make_open_clip_siglip_case(torch, case, folder):
    import copy
    import safetensors.torch
    import open_clip
    from open_clip.constants import HF_CONFIG_NAME, HF_SAFE_WEIGHTS_NAME
    from open_clip.model import CustomTextCLIP, set_model_preprocess_cfg
    from open_clip.push_to_hf_hub import save_config_for_hf
    from timm.layers import resample_abs_pos_embed

    seed = SEEDS[case]
    rng = np.random.default_rng(seed)
    image, image_48 = make_images(rng, N, SIZE), make_images(rng, N_48, SIZE_48)
    ids = siglip_input_ids(rng)
    pv, pv48 = to_pixel_values(image, SIGLIP_MEAN, SIGLIP_STD), to_pixel_values(image_48, SIGLIP_MEAN, SIGLIP_STD)
    cfg = copy.deepcopy(OPEN_CLIP_SIGLIP_CFG)
    cfg.pop("custom_text")
    cfg["init_logit_bias"] = -10.0
    torch.manual_seed(seed)
    with tiny_timm({"img_size": SIZE}):
        model = CustomTextCLIP(**cfg).float().eval()
    perturb_(model, seed + 1000, {"logit_scale": randn_near(math.log(10.0), 0.1),
                                  "logit_bias": randn_near(-10.0, 0.5)})
    set_model_preprocess_cfg(model, {"mean": SIGLIP_MEAN, "std": SIGLIP_STD, "resize_mode": "squash"})
    os.makedirs(folder, exist_ok=True)
    safetensors.torch.save_file(model.state_dict(), os.path.join(folder, HF_SAFE_WEIGHTS_NAME))
    save_config_for_hf(model, Path(folder) / HF_CONFIG_NAME, model_config=copy.deepcopy(OPEN_CLIP_SIGLIP_CFG))

    with tiny_timm({"img_size": SIZE}):
        loaded = open_clip.create_model("local-dir:" + os.path.abspath(folder), device="cpu", precision="fp32").eval()
    ref, mem = open_clip_outputs(torch, loaded, pv, ids), open_clip_outputs(torch, model, pv, ids)
    for k in ref:
        np.testing.assert_array_equal(ref[k], mem[k], err_msg=f"{case}/{k} after save/load")

    state = loaded.state_dict()
    state["visual.trunk.pos_embed"] = resample_abs_pos_embed(state["visual.trunk.pos_embed"], [6, 6],
                                                             num_prefix_tokens=0)
    with tiny_timm({"img_size": SIZE_48}):
        model48 = CustomTextCLIP(**cfg).float().eval()
    model48.load_state_dict(state)
    with torch.no_grad():
        img48 = model48.encode_image(torch.from_numpy(pv48), normalize=False)
    return dict(image=image, mean=np.asarray(SIGLIP_MEAN, np.float32), std=np.asarray(SIGLIP_STD, np.float32),
                pixel_values=pv, input_ids=ids, image_48=image_48, pixel_values_48=pv48, **ref,
                image_embeds_48=np32(img48), pos_embed_48=np32(state["visual.trunk.pos_embed"][0]))


# ----------------------------------------------------------------------------------------------- tokenizers

def clip_bpe_cut():
    """(merges, vocab) of OpenAI CLIP's BPE cut to BPE_MERGES merges, built as CLIP builds its vocabulary."""
    import gzip
    import open_clip
    from open_clip.tokenizer import bytes_to_unicode
    path = os.path.join(os.path.dirname(open_clip.__file__), "bpe_simple_vocab_16e6.txt.gz")
    lines = gzip.open(path).read().decode("utf-8").split("\n")
    merges = lines[1:BPE_MERGES + 1]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == VOCAB and len(set(vocab)) == VOCAB
    return lines[0], merges, vocab


def hf_clip_tokenizer(folder):
    from transformers import CLIPTokenizer
    _, merges, vocab = clip_bpe_cut()
    # transformers 5's CLIPTokenizer (tokenizers-backed) takes the vocabulary and merges themselves
    tok = CLIPTokenizer(vocab={t: i for i, t in enumerate(vocab)}, merges=[tuple(m.split()) for m in merges],
                        model_max_length=CTX)
    tok.save_pretrained(folder)
    reloaded = type(tok).from_pretrained(folder)
    ids = reloaded(TOKEN_TEXTS, padding="max_length", truncation=True, max_length=CTX)["input_ids"]
    assert ids == tok(TOKEN_TEXTS, padding="max_length", truncation=True, max_length=CTX)["input_ids"]
    assert ids[0][0] == BOS and EOS in ids[0], ids[0]
    return np.asarray(ids, np.int32)


def open_clip_tokenizer(folder):
    import gzip
    from open_clip.tokenizer import SimpleTokenizer
    header, merges, _ = clip_bpe_cut()
    path = os.path.join(folder, "bpe_simple_vocab.txt.gz")
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as f:
        f.write("\n".join([header, *merges]).encode("utf-8"))  # no final newline: SimpleTokenizer keeps it
    tok = SimpleTokenizer(bpe_path=path, context_length=CTX)
    assert len(tok.encoder) == VOCAB, len(tok.encoder)
    return tok(TOKEN_TEXTS).numpy().astype(np.int32)


def open_clip_siglip_tokenizer(folder):
    """The hf_siglip SentencePiece files, tokenised by open_clip's HFTokenizer with SigLIP's 'canonicalize'."""
    from open_clip.tokenizer import HFTokenizer
    src = os.path.join(os.path.dirname(folder), "hf_siglip")
    for name in ("spiece.model", "tokenizer_config.json", "special_tokens_map.json"):
        if os.path.exists(os.path.join(src, name)):
            shutil.copyfile(os.path.join(src, name), os.path.join(folder, name))
    tok = HFTokenizer(os.path.abspath(folder), context_length=CTX, clean="canonicalize")
    return tok(TOKEN_TEXTS).numpy().astype(np.int32)


def hf_siglip_tokenizer(folder):
    import sentencepiece as spm
    from transformers import SiglipTokenizer
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS), model_writer=buf, model_type="unigram",
                                   vocab_size=VOCAB, hard_vocab_limit=False, pad_id=0, eos_id=1, unk_id=2,
                                   bos_id=-1, character_coverage=1.0, num_threads=1, minloglevel=2)
    model = os.path.join(folder, "_spiece.model")
    with open(model, "wb") as f:
        f.write(buf.getvalue())
    tok = SiglipTokenizer(vocab_file=model, model_max_length=CTX)
    os.remove(model)
    tok.save_pretrained(folder)
    ids = SiglipTokenizer.from_pretrained(folder)(TOKEN_TEXTS, padding="max_length", truncation=True,
                                                  max_length=CTX)["input_ids"]
    assert max(max(r) for r in ids) < VOCAB
    return np.asarray(ids, np.int32)


# ----------------------------------------------------------------------------------------------- big_vision

BIG_VISION_LAYOUT = (
    "big_vision SigLIP (models/proj/image_text/two_towers.py with vit.py and text_transformer.py; the key list of "
    "transformers' convert_siglip2_to_hf.py): params/img/embedding/{kernel [p,p,3,d],bias}, params/img/pos_embedding "
    "[1,N,d], params/img/Transformer/encoderblock_<i>/{LayerNorm_0,LayerNorm_1}/{scale,bias}, .../MlpBlock_0/"
    "{Dense_0,Dense_1}/{kernel [in,out],bias}, .../MultiHeadDotProductAttention_0/{query,key,value}/{kernel [d,h,hd],"
    "bias [h,hd]}, .../out/{kernel [h,hd,d],bias}, params/img/Transformer/encoder_norm, params/img/MAPHead_0/"
    "{probe [1,1,d], LayerNorm_0, MlpBlock_0, MultiHeadDotProductAttention_0}, params/txt/Embed_0/embedding, "
    "params/txt/pos_embedding, params/txt/Encoder_0/encoderblock_<i>/..., params/txt/Encoder_0/encoder_norm, "
    "params/txt/head/{kernel,bias}, params/t [1], params/b [1]. Scanned: encoderblock/<same> with a leading "
    "depth axis. Written with np.savez from the hf_siglip torch weights.")


def big_vision_params(sd, depth, heads):
    """The hf_siglip state dict in big_vision's SigLIP names and flax layouts (per-layer)."""
    out = {}

    def lin(dst, src):
        out[dst + "/kernel"] = sd[src + ".weight"].T
        out[dst + "/bias"] = sd[src + ".bias"]

    def ln(dst, src):
        out[dst + "/scale"], out[dst + "/bias"] = sd[src + ".weight"], sd[src + ".bias"]

    def attn(dst, q, k, v, o):
        for name, (w, b) in (("query", q), ("key", k), ("value", v)):
            d_out, d_in = w.shape
            out[f"{dst}/{name}/kernel"] = w.T.reshape(d_in, heads, d_out // heads)
            out[f"{dst}/{name}/bias"] = b.reshape(heads, d_out // heads)
        w, b = o
        out[f"{dst}/out/kernel"] = w.T.reshape(heads, w.shape[1] // heads, w.shape[0])
        out[f"{dst}/out/bias"] = b

    def blocks(dst, src):
        for i in range(depth):
            d, s = f"{dst}/encoderblock_{i}", f"{src}.encoder.layers.{i}"
            ln(d + "/LayerNorm_0", s + ".layer_norm1")
            ln(d + "/LayerNorm_1", s + ".layer_norm2")
            lin(d + "/MlpBlock_0/Dense_0", s + ".mlp.fc1")
            lin(d + "/MlpBlock_0/Dense_1", s + ".mlp.fc2")
            attn(d + "/MultiHeadDotProductAttention_0",
                 *[(sd[f"{s}.self_attn.{n}_proj.weight"], sd[f"{s}.self_attn.{n}_proj.bias"]) for n in "qkvo"[:3]],
                 (sd[f"{s}.self_attn.out_proj.weight"], sd[f"{s}.self_attn.out_proj.bias"]))

    out["img/embedding/kernel"] = sd["vision_model.embeddings.patch_embedding.weight"].transpose(2, 3, 1, 0)
    out["img/embedding/bias"] = sd["vision_model.embeddings.patch_embedding.bias"]
    out["img/pos_embedding"] = sd["vision_model.embeddings.position_embedding.weight"][None]
    blocks("img/Transformer", "vision_model")
    ln("img/Transformer/encoder_norm", "vision_model.post_layernorm")
    out["img/MAPHead_0/probe"] = sd["vision_model.head.probe"]
    ln("img/MAPHead_0/LayerNorm_0", "vision_model.head.layernorm")
    lin("img/MAPHead_0/MlpBlock_0/Dense_0", "vision_model.head.mlp.fc1")
    lin("img/MAPHead_0/MlpBlock_0/Dense_1", "vision_model.head.mlp.fc2")
    w, b = sd["vision_model.head.attention.in_proj_weight"], sd["vision_model.head.attention.in_proj_bias"]
    d = w.shape[1]
    attn("img/MAPHead_0/MultiHeadDotProductAttention_0", *[(w[i * d:(i + 1) * d], b[i * d:(i + 1) * d]) for i in range(3)],
         (sd["vision_model.head.attention.out_proj.weight"], sd["vision_model.head.attention.out_proj.bias"]))
    out["txt/Embed_0/embedding"] = sd["text_model.embeddings.token_embedding.weight"]
    out["txt/pos_embedding"] = sd["text_model.embeddings.position_embedding.weight"][None]
    blocks("txt/Encoder_0", "text_model")
    ln("txt/Encoder_0/encoder_norm", "text_model.final_layer_norm")
    lin("txt/head", "text_model.head")
    out["t"], out["b"] = sd["logit_scale"].reshape(1), sd["logit_bias"].reshape(1)
    return {"params/" + k: np.ascontiguousarray(v, np.float32) for k, v in out.items()}


def scanned(params, depth):
    """Per-layer encoderblock_<i>/... stacked into encoderblock/... (big_vision's scan=True layout)."""
    import re
    out, stacks = {}, {}
    for k, v in params.items():
        m = re.match(r"(.*)/encoderblock_(\d+)/(.*)", k)
        if m:
            stacks.setdefault(f"{m.group(1)}/encoderblock/{m.group(3)}", {})[int(m.group(2))] = v
        else:
            out[k] = v
    for k, layers in stacks.items():
        out[k] = np.stack([layers[i] for i in range(depth)])
    return out


def make_big_vision_case(folder, hf_folder):
    from safetensors.numpy import load_file
    sd = load_file(os.path.join(hf_folder, "model.safetensors"))
    cfg = json.load(open(os.path.join(hf_folder, "config.json")))["vision_config"]
    params = big_vision_params(sd, cfg["num_hidden_layers"], cfg["num_attention_heads"])
    save_npz(os.path.join(folder, "siglip.npz"), params)
    save_npz(os.path.join(folder, "siglip_scanned.npz"), scanned(params, cfg["num_hidden_layers"]))


# ----------------------------------------------------------------------------------------------- files

def save_npz(path, arrays):
    """np.savez layout (uncompressed zip of .npy) with a fixed timestamp, so reruns are byte-identical."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key, arr in arrays.items():
            arr = np.ascontiguousarray(arr)
            assert arr.dtype in (np.float32, np.int32, np.uint8), (key, arr.dtype)
            buf = io.BytesIO()
            np.lib.format.write_array(buf, arr, allow_pickle=False)
            info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def describe_folder(folder, arrays):
    files = {name: {"bytes": os.path.getsize(os.path.join(folder, name)), "sha256": sha256(os.path.join(folder, name))}
             for name in sorted(os.listdir(folder))}
    shapes = {k: f"{v.dtype}{list(v.shape)}" for k, v in arrays.items()}
    return files, shapes


def versions(torch):
    import open_clip
    import safetensors
    import timm
    import transformers
    return {"timm": timm.__version__, "python": sys.version.split()[0], "numpy": np.__version__, "torch": torch.__version__,
            "transformers": transformers.__version__, "open_clip_torch": open_clip.__version__,
            "safetensors": safetensors.__version__}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="tests/fixtures/weights", help="folder for the case folders")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch = setup_torch()

    builders = {
        "hf_clip": lambda f: make_hf_case(torch, "hf_clip", f, hf_clip_model, clip_input_ids,
                                          OPENAI_MEAN, OPENAI_STD),
        "hf_siglip": lambda f: make_hf_case(torch, "hf_siglip", f, hf_siglip_model, siglip_input_ids,
                                            SIGLIP_MEAN, SIGLIP_STD),
        "open_clip_clip": lambda f: make_open_clip_case(torch, "open_clip_clip", f),
        "open_clip_siglip": lambda f: make_open_clip_siglip_case(torch, "open_clip_siglip", f),
        "hf_siglip2": lambda f: make_hf_siglip2_case(torch, "hf_siglip2", f),
    }
    manifest = {"command": f"{COMMAND_PREFIX} --out {args.out}", "versions": versions(torch), "seeds": SEEDS,
                "perturbation": PERTURBATION, "tokenizers": TOKENIZERS, "cases": {}}
    for case, build in builders.items():
        folder = os.path.join(args.out, case)
        if os.path.isdir(folder):
            shutil.rmtree(folder)
        os.makedirs(folder)
        arrays = build(folder)
        arrays["token_ids"] = {"hf_clip": hf_clip_tokenizer, "hf_siglip": hf_siglip_tokenizer,
                               "open_clip_clip": open_clip_tokenizer,
                               "open_clip_siglip": open_clip_siglip_tokenizer,
                               "hf_siglip2": hf_siglip_tokenizer}[case](folder)
        with open(os.path.join(folder, "token_texts.json"), "w") as f:
            json.dump(TOKEN_TEXTS, f, ensure_ascii=False, indent=0)
            f.write("\n")
        save_npz(os.path.join(folder, "reference.npz"), arrays)
        files, shapes = describe_folder(folder, arrays)
        manifest["cases"][case] = {"files": files, "arrays": shapes, "notes": NOTES[case]}
        print(f"{case}: " + ", ".join(f"{n} ({d['bytes']} B)" for n, d in files.items()))
    folder = os.path.join(args.out, "big_vision_siglip")
    if os.path.isdir(folder):
        shutil.rmtree(folder)
    os.makedirs(folder)
    make_big_vision_case(folder, os.path.join(args.out, "hf_siglip"))
    files, _ = describe_folder(folder, {})
    manifest["cases"]["big_vision_siglip"] = {"files": files, "notes": BIG_VISION_LAYOUT}
    print("big_vision_siglip: " + ", ".join(f"{n} ({d['bytes']} B)" for n, d in files.items()))
    with open(os.path.join(args.out, "fixtures.json"), "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
