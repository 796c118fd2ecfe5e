"""CLIPPO on emoji: one ViT reads the emoji image and its caption rendered with GNU Unifont.

  --config experiments/emoji_clippo.py                  English captions, InfoNCE (compare: emoji_two_tower.py)
  --config experiments/emoji_clippo.py:langs=multi      captions in 7 languages; Italian and Russian held out
  --config experiments/emoji_clippo.py:loss=siglip      sigmoid loss
  --config experiments/emoji_clippo.py:size=test        tiny model for tests
  --config experiments/emoji_clippo.py:text_px=96       captions rendered at 96 px (all fit; slower, worse at 1.2k steps)
"""
from vlm_jax.config import config_args, small_run
from vlm_jax.data.ops import STYLE_AUGMENT
from vlm_jax.objectives.contrastive import apply_loss_preset

TRAIN_LANGS = ("en", "de", "es", "fr", "ko", "ja", "zh")
HELD_OUT_LANGS = ("it", "ru")
SIZES = {  # shared tower, embedding dim, image px, patch
    "test": (dict(width=32, depth=1, mlp_dim=64, num_heads=2), 32, 32, 16),
    "small": (dict(width=128, depth=4, mlp_dim=512, num_heads=4), 128, 64, 16),
}


def get_config(arg=None):
    """`arg`: loss=clip|siglip, size=small|test, steps=N, batch=N, langs=en|multi, text_px (0: image px)."""
    arg = config_args(arg, loss="clip", size="small", steps=1200, batch=256, langs="en", text_px=0)
    if arg.langs not in ("en", "multi"):
        raise ValueError(f"langs must be en or multi, got {arg.langs!r}")
    tower, embed_dim, size, patch = SIZES[arg.size]
    text_size = arg.text_px or size
    multi = arg.langs == "multi"
    c = small_run("clippo", arg.steps, arg.batch)

    # Same emoji styles and augmentation as the two-tower config. Images at 64 px with 16-px patches give the
    # same 4×4 token grid as the two-tower's 32 px / 8 px; a 16-px Unifont line is one patch row. Text at 64 px
    # holds 1107/1871 "an emoji of {name}." captions whole (1761 bare names); text_px=96 holds all of them
    # but trained worse in 1.2k steps (README), so 64 is the default.
    c.data = dict(name="emoji", data_dir="", image_size=size, text_len=16, train_styles=("noto", "twitter", "facebook"),
                  text_format="render", text_image_size=text_size, font_size=16, max_chars=0, sampling="examples",
                  languages=TRAIN_LANGS if multi else ("en",), templates=["{}"] if multi else None,
                  augment=STYLE_AUGMENT)
    # sincos posemb: the tower reads images and rendered text of any size
    c.model = dict(image=dict(posemb="sincos2d", pool_type="map", patch_size=(patch, patch), **tower),
                   embed_dim=embed_dim)
    loss = apply_loss_preset(c, arg.loss)

    c.optim.b2 = loss["b2"]
    c.evals = dict(batch_size=256, sets=["emoji", "fashion_mnist"])
    if multi:
        c.evals.templates = ["{}"]
        c.evals.languages = list(TRAIN_LANGS + HELD_OUT_LANGS)
    if arg.size == "test":
        c.log_every = 1
        c.evals.batch_size = 64
    return c
