"""Paper-scale image-to-text configs (CoCa, CapPa) for pods and TPU dry runs.

The data stream is `synthetic` (shapes only) until a web-scale image–text source is wired in.

  --config experiments/captioner_scale.py:model=coca_base      CoCa-Base (Yu et al. 2022): ViT-B/18 @288,
                                                               12 unimodal + 12 multimodal decoder layers,
                                                               256 captioning queries, batch 65,536
  --config experiments/captioner_scale.py:model=cappa_b16      CapPa B/16 (Tschannen et al. 2023): ViT-B/16
                                                               @224, 6-layer decoder on all 196 image tokens,
                                                               batch 8,192
  --config experiments/captioner_scale.py:model=paligemma_like PrefixLM on a PaliGemma-like decoder-only stack:
                                                               So400m/14 @224 + 2B-sized decoder, batch 1,024
"""
import ml_collections

from vlm_jax.config import config_args
from vlm_jax.sharding import fsdp_mesh
from vlm_jax.variants import parse_variant

PRESETS = {
    # objective, ViT, res, decoder (width, depth, unimodal depth, mlp, heads), cap queries, embed, vocab, len, batch
    "coca_base": ("coca", "B/18", 288, (768, 24, 12, 3072, 12), 256, 768, 64_000, 64, 65_536),
    "cappa_b16": ("cappa", "B/16", 224, (768, 6, 0, 3072, 12), 0, 0, 32_000, 64, 8_192),
    # PaliGemma-like decoder-only prefix-LM (Beyer et al. 2024): So400m/14 @224 (256 tokens) + a Gemma-2B-sized
    # stack (width 2048, 18 layers, MLP 16384; here GELU MLP and full multi-head attention), vocab 257,152
    "paligemma_like": ("prefixlm", "So400m/14", 224, (2048, 18, 0, 16384, 8), 0, 0, 257_152, 128, 1_024),
}


def get_config(arg=None):
    """`arg`: model=coca_base|cappa_b16|paligemma_like, batch (0: the paper's), steps, fsdp (-1: all devices), remat."""
    arg = config_args(arg, model="coca_base", batch=0, steps=20_000, fsdp=-1, remat="minimal")
    if arg.model not in PRESETS:
        raise ValueError(f"model must be one of {sorted(PRESETS)}, got {arg.model!r}")
    objective, variant, res, (width, depth, uni, mlp, heads), queries, embed, vocab, text_len, batch = \
        PRESETS[arg.model]
    common = dict(dtype_mm="bfloat16", residual_dtype="bfloat16", remat_policy=arg.remat)

    c = ml_collections.ConfigDict()
    c.objective = objective
    c.seed = 0
    c.total_steps = arg.steps
    c.batch_size = arg.batch or batch
    c.mesh = fsdp_mesh(arg.fsdp)
    c.log_every = 50
    c.data = dict(name="synthetic", image_size=res, text_len=text_len, vocab_size=vocab)
    c.model = dict(image=dict(posemb="learn", scan=True, **parse_variant(variant), **common),
                   decoder=dict(width=width, depth=depth, unimodal_depth=uni, mlp_dim=mlp, num_heads=heads, scan=True,
                                **common),
                   **({} if objective == "prefixlm" else dict(cap_queries=queries)))
    if objective == "coca":
        c.model.embed_dim = embed
        c.model.temperature_init = 1 / 0.07
        c.loss = dict(name="infonce", contrastive_weight=1.0, caption_weight=2.0)
    elif objective == "cappa":
        c.loss = dict(parallel_fraction=0.75)
    c.optim = dict(name="adamw", lr=1e-3, b2=0.95, weight_decay=1e-4, warmup_steps=min(2_000, arg.steps // 10),
                   schedule="cosine", clip_norm=1.0)
    c.checkpoint = dict(every_steps=1_000, keep=3)
    c.evals = dict(sets=[], captions=False, scoring=False)
    return c
