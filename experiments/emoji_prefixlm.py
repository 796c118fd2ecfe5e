"""PrefixLM (SimVLM) on emoji: a decoder-only image prefix-LM (projected ViT tokens, then the caption, in one
stack) trained with a random split point per caption; evaluated like CapPa on held-out OpenMoji drawings
(generated captions, perplexity, scoring classifier).

  --config experiments/emoji_prefixlm.py               1.2k steps, CLIP's data, batch and schedule
  --config experiments/emoji_prefixlm.py:size=test     tiny model for tests
"""
from vlm_jax.config import config_args, small_run
from vlm_jax.data.ops import STYLE_AUGMENT

SIZES = {
    # image tower, prefix-LM stack (image tokens + text), image px
    "test": (dict(width=32, depth=1, mlp_dim=64, num_heads=2, patch_size=(8, 8)),
             dict(width=32, depth=2, mlp_dim=64, num_heads=2), 32),
    "small": (dict(width=128, depth=4, mlp_dim=512, num_heads=4, patch_size=(8, 8)),
              dict(width=128, depth=2, mlp_dim=512, num_heads=4), 32),
}


def get_config(arg=None):
    """`arg`: size=small|test, steps=N, batch=N."""
    arg = config_args(arg, size="small", steps=1200, batch=256)
    image, decoder, image_size = SIZES[arg.size]
    c = small_run("prefixlm", arg.steps, arg.batch)
    c.data = dict(name="emoji", data_dir="", image_size=image_size, text_len=16,
                  train_styles=("noto", "twitter", "facebook"), sampling="examples", augment=STYLE_AUGMENT)
    c.model = dict(image=dict(posemb="learn", **image), decoder=decoder)
    c.evals = dict(batch_size=256, sets=["emoji", "fashion_mnist"])
    if arg.size == "test":
        c.log_every = 1
        c.evals = dict(batch_size=64, sets=["emoji"], scoring_pairs=2048, examples=1)
    return c
