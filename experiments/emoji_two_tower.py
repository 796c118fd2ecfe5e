"""Two-tower CLIP / SigLIP on emoji (Noto renders + CLDR names), evaluated cross-style on OpenMoji.

  --config experiments/emoji_two_tower.py                    CLIP (InfoNCE), the default run (4k steps, ~12 min)
  --config experiments/emoji_two_tower.py:loss=siglip        SigLIP (sigmoid)
  --config experiments/emoji_two_tower.py:steps=1200         the shorter run the README's other columns use
  --config experiments/emoji_two_tower.py:dtype=bfloat16     bf16 matmuls (on CPU: the oneDNN kernel, 1 device)
  --config experiments/emoji_two_tower.py:size=test          tiny model for tests
  --config experiments/emoji_two_tower.py:shards=DIR         train from webdataset / parquet shards of the same
                                                             data (python -m vlm_jax.tools.make_shards --dataset emoji)
  --config experiments/emoji_two_tower.py:shards=DIR,workers=2   … decoded in 2 grain worker processes
  --config experiments/emoji_two_tower.py:arch=open_clip     towers open_clip's CLIP class can hold exactly (class
                                                             token, pre-LN, exact GELU, eps 1e-5, bias-free
                                                             projections), so `tools.convert --to open_clip` exports it
"""
from vlm_jax.config import config_args, small_run
from vlm_jax.data.ops import STYLE_AUGMENT
from vlm_jax.objectives.contrastive import apply_loss_preset

# arch=open_clip: the options that make both towers expressible by open_clip's CLIP (docs/checkpoints.md)
OPEN_CLIP_ARCH = (dict(pool_type="tok", ln_pre=True, act="gelu", ln_eps=1e-5, head_bias=False),
                  dict(act="gelu", ln_eps=1e-5, head_bias=False))

SIZES = {
    # image tower, text tower, embedding dim, image px
    "test": (dict(width=32, depth=1, mlp_dim=64, num_heads=2, patch_size=(8, 8)),
             dict(width=32, depth=1, mlp_dim=64, num_heads=2), 32, 32),
    "small": (dict(width=128, depth=4, mlp_dim=512, num_heads=4, patch_size=(8, 8)),
              dict(width=128, depth=2, mlp_dim=512, num_heads=4), 128, 32),
}


def get_config(arg=None):
    """`arg`: loss=clip|siglip, size=small|test, steps=N, batch=N, dtype=float32|bfloat16 (matmul inputs),
    shards=DIR|PATTERN (train from shards), workers=N (grain worker processes decoding the shards),
    arch=vlm_jax|open_clip (towers open_clip can hold exactly)."""
    arg = config_args(arg, loss="clip", size="small", steps=4000, batch=256, dtype="float32", shards="", workers=0,
                      arch="vlm_jax")
    if arg.arch not in ("vlm_jax", "open_clip"):
        raise ValueError(f"arch must be 'vlm_jax' or 'open_clip', got {arg.arch!r}")
    image, text, embed_dim, image_size = SIZES[arg.size]
    c = small_run("contrastive", arg.steps, arg.batch)

    c.data = dict(name="emoji", data_dir="", image_size=image_size, text_len=16,
                  train_styles=("noto", "twitter", "facebook"), sampling="examples",
                  augment=STYLE_AUGMENT)
    if arg.shards:  # the same examples, read from shards (global shuffle: one-sample chunks)
        c.data.shards = dict(urls=arg.shards, fields=("concept",), chunk=1, window=1, worker_count=arg.workers)
    c.model = dict(
        image=dict(posemb="learn", pool_type="map", dtype_mm=arg.dtype, **image),
        text=dict(vocab_size=0, causal=True, pool_type="last", max_len=16, dtype_mm=arg.dtype, **text),
        embed_dim=embed_dim)
    if arg.arch == "open_clip":
        c.model.image.update(OPEN_CLIP_ARCH[0])
        c.model.text.update(OPEN_CLIP_ARCH[1])
    loss = apply_loss_preset(c, arg.loss)

    c.optim.b2 = loss["b2"]
    c.evals = dict(batch_size=256, sets=["emoji", "fashion_mnist"])
    if arg.size == "test":
        c.log_every = 1
        c.evals.batch_size = 64
    return c
