"""BLIP-2 stage 1 on emoji (`objective=blip2_qformer`): a Q-Former with learned queries trained by image–text
contrast, matching with hard negatives and image-grounded generation; evaluated zero-shot (classification and
retrieval on held-out OpenMoji drawings) with the contrastive score, the best query against the text.

  --config experiments/emoji_blip2.py                  1.2k steps, CLIP's data, batch and schedule
  --config experiments/emoji_blip2.py:size=test        tiny model for tests

The image encoder trains here; BLIP-2 freezes a pretrained one: `init_from.workdir=<a CLIP run>`,
`init_from.include='^img/(?!MAPHead)'` and `optim.freeze='^img/'` (the CLIP run's ViT must match model.image).
"""
from vlm_jax.config import config_args, small_run
from vlm_jax.data.ops import STYLE_AUGMENT

SIZES = {
    # image tower, Q-Former, image px
    "test": (dict(width=32, depth=1, mlp_dim=64, num_heads=2, patch_size=(8, 8)),
             dict(num_queries=4, width=32, depth=2, mlp_dim=64, num_heads=2), 32),
    "small": (dict(width=128, depth=4, mlp_dim=512, num_heads=4, patch_size=(8, 8)),
              dict(num_queries=8, width=128, depth=2, mlp_dim=512, num_heads=4), 32),
}


def get_config(arg=None):
    """`arg`: size=small|test, steps=N, batch=N, seed=N."""
    arg = config_args(arg, size="small", steps=1200, batch=256, seed=0)
    image, qformer, image_size = SIZES[arg.size]
    c = small_run("blip2_qformer", int(arg.steps), int(arg.batch))
    c.seed = int(arg.seed)
    c.data = dict(name="emoji", data_dir="", image_size=image_size, text_len=16,
                  train_styles=("noto", "twitter", "facebook"), sampling="concepts", augment=STYLE_AUGMENT)
    c.model = dict(image=dict(posemb="learn", **image), qformer=qformer, embed_dim=64)
    c.loss = dict(itc_weight=1.0, itm_weight=1.0, itg_weight=1.0)
    c.evals = dict(batch_size=256, sets=["emoji", "fashion_mnist"])
    if arg.size == "test":
        c.log_every = 1
        c.evals = dict(batch_size=64, sets=["emoji"])
    return c
