"""Two-tower CLIP / SigLIP on emoji (Noto renders + CLDR names), evaluated cross-style on OpenMoji.

  --config experiments/emoji_two_tower.py                    CLIP (InfoNCE), the default run
  --config experiments/emoji_two_tower.py:loss=siglip        SigLIP (sigmoid)
  --config experiments/emoji_two_tower.py:steps=5000      the longer (~45 min) run
  --config experiments/emoji_two_tower.py:size=test          tiny model for tests
"""
import ml_collections

SIZES = {
    # image tower, text tower, embedding dim, image px
    "test": (dict(width=32, depth=1, mlp_dim=64, num_heads=2, patch_size=(8, 8)),
             dict(width=32, depth=1, mlp_dim=64, num_heads=2), 32, 32),
    "small": (dict(width=128, depth=4, mlp_dim=512, num_heads=4, patch_size=(8, 8)),
              dict(width=128, depth=2, mlp_dim=512, num_heads=4), 128, 32),
}


def get_config(arg=None):
    """`arg`: loss=clip|siglip, size=small|test, steps=N, batch=N."""
    given = arg.to_dict() if isinstance(arg, ml_collections.ConfigDict) else {}
    arg = ml_collections.ConfigDict(dict(loss="clip", size="small", steps=1200, batch=256))
    unknown = set(given) - set(arg.keys())
    if unknown:
        raise ValueError(f"Unknown config arg(s) {sorted(unknown)}; valid: {sorted(arg.keys())}")
    arg.update(given)
    image, text, embed_dim, image_size = SIZES[arg.size]
    c = ml_collections.ConfigDict()
    c.objective = "contrastive"
    c.seed = 0
    c.total_steps = arg.steps
    c.batch_size = arg.batch
    c.log_every = 50
    c.eval_every = 0

    c.data = dict(name="emoji", data_dir="", image_size=image_size, text_len=16,
                  train_styles=("noto", "twitter", "facebook"),
                  augment=dict(crop=dict(scale=(0.6, 1.0)), grayscale=0.1,
                               jitter=dict(p=0.8, brightness=0.3, contrast=0.3, saturation=0.4, hue=0.1),
                               blur=dict(p=0.2, sigma=(0.1, 1.0)), flatten=dict(p=0.2, colors=(3, 12)),
                               outline=dict(p=0.3, width=(1, 2))))
    c.model = dict(
        image=dict(posemb="learn", pool_type="map", **image),
        text=dict(vocab_size=0, causal=True, pool_type="last", max_len=16, **text),  # vocab from tokenizer
        embed_dim=embed_dim)
    if arg.loss == "clip":
        c.loss = dict(name="infonce")
        c.model.temperature_init = 1 / 0.07
    elif arg.loss == "siglip":
        c.loss = dict(name="sigmoid")
        c.model.temperature_init = 10.0
        c.model.bias_init = -10.0
    else:
        raise ValueError(f"loss must be clip or siglip, got {arg.loss!r}")

    c.optim = dict(name="adamw", lr=1e-3, b2=0.95 if arg.loss == "siglip" else 0.98, weight_decay=0.1,
                   warmup_steps=min(200, arg.steps // 10), schedule="cosine", clip_norm=1.0)
    c.checkpoint = dict(every_steps=max(arg.steps // 4, 1), keep=2)
    c.evals = dict(batch_size=256, sets=["emoji", "fashion_mnist"])
    if arg.size == "test":
        c.log_every = 1
        c.evals.batch_size = 64
    return c
