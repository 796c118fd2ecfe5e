"""Paper-scale prompted image-to-text configs (objective "pali") for pods and TPU dry runs.

The data stream is `synthetic` with random prompts (shapes only) until a web-scale multi-task source is wired in.

  --config experiments/pali_scale.py:model=pali3_like       PaLI-3-like encoder–decoder (Chen et al. 2023):
                                                            ViT-G/14 @224 (256 tokens) + a 3B-class T5-XL-sized
                                                            encoder–decoder (width 2048, 24 + 24 layers)
  --config experiments/pali_scale.py:model=paligemma_like   PaliGemma-like decoder-only (Beyer et al. 2024):
                                                            So400m/14 @224 + a Gemma-2B-sized stack; image and
                                                            prompt bidirectional, answer causal
"""
import ml_collections

from vlm_jax.config import config_args
from vlm_jax.sharding import fsdp_mesh
from vlm_jax.variants import parse_variant

PRESETS = {
    # layout, ViT, res, encoder (width, depth, mlp, heads) or None, decoder (width, depth, mlp, heads), vocab,
    # prompt len, answer len, batch. Widths/depths follow the papers' towers; GELU MLPs and full multi-head
    # attention stand in for the language models' gated MLPs and multi-query attention; batch is ours.
    "pali3_like": ("encdec", "G/14", 224, (2048, 24, 5120, 32), (2048, 24, 5120, 32), 250_112, 64, 64, 1_024),
    "paligemma_like": ("decoder", "So400m/14", 224, None, (2048, 18, 16384, 8), 257_152, 64, 64, 1_024),
}


def get_config(arg=None):
    """`arg`: model=pali3_like|paligemma_like, batch (0: the preset's), steps, fsdp (-1: all devices), remat."""
    arg = config_args(arg, model="pali3_like", batch=0, steps=20_000, fsdp=-1, remat="minimal")
    if arg.model not in PRESETS:
        raise ValueError(f"model must be one of {sorted(PRESETS)}, got {arg.model!r}")
    layout, variant, res, encoder, decoder, vocab, prompt_len, text_len, batch = PRESETS[arg.model]
    common = dict(dtype_mm="bfloat16", remat_policy=arg.remat, scan=True)

    c = ml_collections.ConfigDict()
    c.objective = "pali"
    c.seed = 0
    c.total_steps = arg.steps
    c.batch_size = arg.batch or batch
    c.mesh = fsdp_mesh(arg.fsdp)
    c.log_every = 50
    c.data = dict(name="synthetic", image_size=res, text_len=text_len, prompt_len=prompt_len, vocab_size=vocab)
    width, depth, mlp, heads = decoder
    c.model = dict(layout=layout,
                   image=dict(posemb="learn", residual_dtype="bfloat16", **parse_variant(variant), **common),
                   decoder=dict(width=width, depth=depth, mlp_dim=mlp, num_heads=heads, residual_dtype="bfloat16",
                                **common))
    if encoder:
        width, depth, mlp, heads = encoder
        c.model.encoder = dict(width=width, depth=depth, mlp_dim=mlp, num_heads=heads, residual_dtype="bfloat16",
                               **common)
    c.optim = dict(name="adamw", lr=1e-3, b2=0.95, weight_decay=1e-4, warmup_steps=min(2_000, arg.steps // 10),
                   schedule="cosine", clip_norm=1.0)
    c.checkpoint = dict(every_steps=1_000, keep=3)
    c.evals = dict(captions=False, scoring=False)
    return c
