"""PaLI-style prompted multi-task training on the package data: Tux Paint captions in English and German, emoji
names and CLDR groups, and text-only name translation (data "multitask"), with per-task held-out evaluation.

  --config experiments/multitask_pali.py                        encoder–decoder (PaLI), 1.2k steps
  --config experiments/multitask_pali.py:layout=decoder         decoder-only prefix layout (PaliGemma-style)
  --config experiments/multitask_pali.py:size=test              tiny model for tests
  --config experiments/multitask_pali.py:naflex=9+16+25          NaFlex: stamps at their own aspect ratio, a budget
                                                                 of 9, 16 or 25 patches per batch, every task
                                                                 evaluated at each (and 36)
"""
from vlm_jax.config import config_args, small_run
from vlm_jax.data.ops import STYLE_AUGMENT

SIZES = {
    # image tower, encoder (encdec layout), decoder, image px
    "test": (dict(width=32, depth=1, mlp_dim=64, num_heads=2, patch_size=(8, 8)),
             dict(width=32, depth=1, mlp_dim=64, num_heads=2), dict(width=32, depth=1, mlp_dim=64, num_heads=2), 32),
    "small": (dict(width=128, depth=4, mlp_dim=512, num_heads=4, patch_size=(8, 8)),
              dict(width=128, depth=2, mlp_dim=512, num_heads=4), dict(width=128, depth=2, mlp_dim=512, num_heads=4),
              32),
}


def get_config(arg=None):
    """`arg`: layout=encdec|decoder, size=small|test, steps=N, batch=N, naflex=budgets (e.g. 9+16+25; empty: fixed
    32 px squares), eval_budgets (default: the training budgets and 36)."""
    arg = config_args(arg, layout="encdec", size="small", steps=1200, batch=256, naflex="", eval_budgets="")
    image, encoder, decoder, image_size = SIZES[arg.size]
    if arg.layout == "decoder":  # one stack: as deep as the encoder and decoder together
        decoder = dict(decoder, depth=decoder["depth"] + encoder["depth"])
    c = small_run("pali", arg.steps, arg.batch)
    c.data = dict(name="multitask", data_dir="", image_size=image_size, text_len=32, prompt_len=16,
                  augment=STYLE_AUGMENT,
                  tasks=dict(caption_en=0.3, caption_de=0.15, emoji_name=0.3, emoji_group=0.15, translate_de=0.1))
    budgets = tuple(int(b) for b in str(arg.naflex).replace("+", ",").split(",") if b)
    if budgets:  # the 4 × 4 position table (32 px / 8 px patches) resized to each image's grid
        evals = tuple(int(b) for b in str(arg.eval_budgets).replace("+", ",").split(",") if b) \
            or tuple(sorted(set(budgets) | {36}))
        c.data.naflex = dict(budgets=budgets, patch=image["patch_size"][0], eval_budgets=evals)
        image = dict(image, posemb_grid=image_size // image["patch_size"][0])
    c.model = dict(layout=arg.layout, image=dict(posemb="learn", **image), decoder=decoder)
    if arg.layout == "encdec":
        c.model.encoder = encoder
    c.evals = dict(batch_size=256, scoring_pairs=500_000)
    if arg.size == "test":
        c.log_every = 1
        c.evals = dict(batch_size=32, scoring_pairs=512, max_items=16, examples=1)
    return c
