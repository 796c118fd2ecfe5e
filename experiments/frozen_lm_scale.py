"""Paper-scale frozen-backbone VLMs (issue 32) for pods and TPU dry runs: the vision encoder and the language model are
frozen (`optim.freeze`), the bridge trains. The data stream is `synthetic` (shapes only); a real run loads the
towers with `init_from` (and `init_from.more`) from imported or pretrained checkpoints.

  --config experiments/frozen_lm_scale.py:model=flamingo3b_like   Flamingo-3B-like (Alayrac et al. 2022): a frozen
        ViT-H/14 @224 (stand-in for its NFNet-F6), a 6-layer Perceiver resampler with 64 latents, and tanh-gated
        cross-attention before every block of a frozen 1.4B-sized LM (width 2048, 24 blocks); 64 caption tokens
  --config experiments/frozen_lm_scale.py:model=blip2_stage1_g    BLIP-2 stage 1 (Li et al. 2023): a frozen
        ViT-g/14 @224 and a BERT-base-sized Q-Former (32 queries, 12 blocks, cross-attention every other block)
        trained by ITC + ITM + ITG, batch 1,680 (the paper's for ViT-g)
  --config experiments/frozen_lm_scale.py:model=blip2_opt2.7b_like   BLIP-2 stage 2: the Q-Former's 32 query outputs
        as the prefix of a frozen OPT-2.7B-sized LM (width 2560, 32 blocks, vocab 50,272), batch 1,520
"""
from vlm_jax.config import config_args, pod_run
from vlm_jax.sharding import fsdp_mesh
from vlm_jax.variants import parse_variant

QFORMER = dict(num_queries=32, width=768, depth=12, mlp_dim=3072, num_heads=12, cross_every=2)  # BERT-base + queries
PRESETS = {
    # objective, ViT, res, LM (width, depth, mlp, heads) or None, vocab, text len, batch
    "flamingo3b_like": ("flamingo", "H/14", 224, (2048, 24, 8192, 16), 32_000, 64, 1_024),
    "blip2_stage1_g": ("blip2_qformer", "g/14", 224, None, 30_522, 32, 1_680),
    "blip2_opt2.7b_like": ("vision_prefix", "g/14", 224, (2560, 32, 10240, 32), 50_272, 32, 1_520),
}
FROZEN = {  # what each model freezes: the pretrained towers
    "flamingo": "^img/|^decoder/(?!.*gated_xattn)",
    "blip2_qformer": "^img/",
    "vision_prefix": "^img/|^decoder/",
}


def get_config(arg=None):
    """`arg`: model=flamingo3b_like|blip2_stage1_g|blip2_opt2.7b_like, batch (0: the preset's), steps, fsdp (-1: all
    devices), remat."""
    arg = config_args(arg, model="flamingo3b_like", batch=0, steps=20_000, fsdp=-1, remat="minimal")
    if arg.model not in PRESETS:
        raise ValueError(f"model must be one of {sorted(PRESETS)}, got {arg.model!r}")
    objective, variant, res, lm, vocab, text_len, batch = PRESETS[arg.model]
    c, towers = pod_run(objective, int(arg.steps), int(arg.batch or batch), fsdp_mesh(arg.fsdp), arg.remat)
    c.data = dict(name="synthetic", image_size=res, text_len=text_len, vocab_size=vocab)
    image = dict(posemb="learn", **parse_variant(variant), **towers)
    if lm is None:  # BLIP-2 stage 1: no LM
        c.model = dict(image=image, qformer=dict(QFORMER, dtype_mm="bfloat16"), embed_dim=256)
        c.loss = dict(itc_weight=1.0, itm_weight=1.0, itg_weight=1.0)
    else:
        width, depth, mlp, heads = lm
        decoder = dict(width=width, depth=depth, mlp_dim=mlp, num_heads=heads, **towers)
        c.model = dict(image=image, decoder=decoder, lm_max_len=text_len)
        if objective == "flamingo":
            c.model.resampler = dict(num_latents=64, depth=6, num_heads=16)
            c.model.gated_every = 1
        else:
            c.model.mapper = dict(kind="qformer", qformer=dict(QFORMER, dtype_mm="bfloat16"))
    c.optim = dict(name="adamw", lr=1e-4, b2=0.98, weight_decay=0.05, warmup_steps=min(2_000, arg.steps // 10),
                   schedule="cosine", clip_norm=1.0, freeze=FROZEN[objective])
    c.checkpoint = dict(every_steps=1_000, keep=3)
    c.evals = dict(sets=[])
    return c
