"""CoCa on emoji (Noto + Twitter + Facebook drawings with CLDR-name captions), evaluated on held-out OpenMoji
drawings: zero-shot / retrieval like CLIP, generated captions (CIDEr-D, BLEU), perplexity, scoring classifier.

  --config experiments/emoji_coca.py               the README run (1.2k steps, CLIP's data, batch and schedule)
  --config experiments/emoji_coca.py:size=test     tiny model for tests
"""
from vlm_jax.config import config_args, small_run
from vlm_jax.data.ops import STYLE_AUGMENT

SIZES = {
    # image tower, decoder (unimodal half = CLIP's 2-layer text tower), embedding dim, image px, cap queries
    "test": (dict(width=32, depth=1, mlp_dim=64, num_heads=2, patch_size=(8, 8)),
             dict(width=32, depth=2, unimodal_depth=1, mlp_dim=64, num_heads=2), 32, 32, 4),
    "small": (dict(width=128, depth=4, mlp_dim=512, num_heads=4, patch_size=(8, 8)),
              dict(width=128, depth=4, unimodal_depth=2, mlp_dim=512, num_heads=4), 128, 32, 16),
}


def get_config(arg=None):
    """`arg`: size=small|test, steps=N, batch=N."""
    arg = config_args(arg, size="small", steps=1200, batch=256)
    image, decoder, embed_dim, image_size, cap_queries = SIZES[arg.size]
    c = small_run("coca", arg.steps, arg.batch)
    c.data = dict(name="emoji", data_dir="", image_size=image_size, text_len=16,
                  train_styles=("noto", "twitter", "facebook"), sampling="examples", augment=STYLE_AUGMENT)
    c.model = dict(image=dict(posemb="learn", **image), decoder=decoder, embed_dim=embed_dim,
                   cap_queries=cap_queries, temperature_init=1 / 0.07)
    # Yu et al. 2022: loss = 1.0 · contrastive (InfoNCE) + 2.0 · captioning
    c.loss = dict(name="infonce", contrastive_weight=1.0, caption_weight=2.0)
    c.evals = dict(batch_size=256, sets=["emoji", "fashion_mnist"])
    if arg.size == "test":
        c.log_every = 1
        c.evals = dict(batch_size=64, sets=["emoji"], scoring_pairs=2048, examples=1)
    return c
