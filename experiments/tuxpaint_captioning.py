"""Image captioning on Tux Paint stamps (856 training pictures with one-sentence descriptions; 94 held-out
stamps whose captions never occur in training), by CapPa, CoCa or the decoder-only PrefixLM.

  --config experiments/tuxpaint_captioning.py                    CapPa (parallel fraction 0.75)
  --config experiments/tuxpaint_captioning.py:objective=coca     CoCa (contrastive + captioning)
  --config experiments/tuxpaint_captioning.py:objective=prefixlm PrefixLM (image tokens as a decoder prefix)
  --config experiments/tuxpaint_captioning.py:size=test          tiny model for tests
  --config experiments/tuxpaint_captioning.py:naflex=9+16+25      NaFlex: native-aspect stamps, a budget of 9, 16 or
                                                                  25 patches per batch, evaluated at each (and 36)
"""
import ml_collections

from vlm_jax.config import config_args
from vlm_jax.data.ops import STYLE_AUGMENT

SIZES = {
    # image tower, decoder width / mlp / heads, CapPa decoder depth, CoCa decoder depth (half unimodal)
    "test": (dict(width=32, depth=1, mlp_dim=64, num_heads=2, patch_size=(8, 8)), (32, 64, 2), 1, 2),
    "small": (dict(width=128, depth=4, mlp_dim=512, num_heads=4, patch_size=(8, 8)), (128, 512, 4), 2, 4),
}


def get_config(arg=None):
    """`arg`: objective=cappa|coca|prefixlm, size=small|test, steps=N, batch=N, naflex=budgets (e.g. 9+16+25; empty: fixed
    32 px squares), eval_budgets (default: the training budgets and 36)."""
    arg = config_args(arg, objective="cappa", size="small", steps=600, batch=128, naflex="", eval_budgets="")
    if arg.objective not in ("cappa", "coca", "prefixlm"):
        raise ValueError(f"objective must be cappa, coca or prefixlm, got {arg.objective!r}")
    image, (width, mlp, heads), cappa_depth, coca_depth = SIZES[arg.size]
    c = ml_collections.ConfigDict()
    c.objective = arg.objective
    c.seed = 0
    c.total_steps = arg.steps
    c.batch_size = arg.batch
    c.log_every = 50
    c.eval_every = 0
    c.data = dict(name="tuxpaint", data_dir="", image_size=32, text_len=32, augment=STYLE_AUGMENT)
    decoder = dict(width=width, mlp_dim=mlp, num_heads=heads)
    budgets = tuple(int(b) for b in str(arg.naflex).replace("+", ",").split(",") if b)
    if budgets:  # the 4 × 4 position table (32 px / 8 px patches) resized to each stamp's grid
        evals = tuple(int(b) for b in str(arg.eval_budgets).replace("+", ",").split(",") if b) \
            or tuple(sorted(set(budgets) | {36}))
        c.data.naflex = dict(budgets=budgets, patch=image["patch_size"][0], eval_budgets=evals)
        image = dict(image, posemb_grid=32 // image["patch_size"][0])
    if arg.objective == "cappa":
        c.model = dict(image=dict(posemb="learn", **image), decoder=dict(depth=cappa_depth, **decoder), cap_queries=0)
        c.loss = dict(parallel_fraction=0.75)
    elif arg.objective == "prefixlm":  # one stack as deep as CoCa's decoder
        c.model = dict(image=dict(posemb="learn", **image), decoder=dict(depth=coca_depth, **decoder))
    else:
        c.model = dict(image=dict(posemb="learn", **image), embed_dim=width, temperature_init=1 / 0.07,
                       decoder=dict(depth=coca_depth, unimodal_depth=coca_depth // 2, **decoder), cap_queries=16)
        c.loss = dict(name="infonce", contrastive_weight=1.0, caption_weight=2.0)
    c.optim = dict(name="adamw", lr=1e-3, b2=0.98, weight_decay=0.1, warmup_steps=min(100, arg.steps // 10),
                   schedule="cosine", clip_norm=1.0)
    c.checkpoint = dict(every_steps=max(arg.steps // 4, 1), keep=2)
    c.evals = dict(batch_size=128, sets=["tuxpaint"], templates=["{}"], examples=3)
    if arg.size == "test":
        c.log_every = 1
        c.evals = dict(batch_size=64, sets=["tuxpaint"], templates=["{}"], examples=1)
    return c
