"""NaFlex vs fixed resolution: SigLIP / CLIP on Tux Paint stamps (856 training pictures of many aspect ratios,
94 held-out stamps retrieved among their captions), at equal tokens per image.

  --config experiments/tuxpaint_naflex.py                         NaFlex: budget drawn per batch from 9/16/25
                                                                   patches (mean 16.7), evaluated at 9, 16, 25, 36
  --config experiments/tuxpaint_naflex.py:mode=fixed              fixed 32 px squares (16 patches of 8 px): stamps
                                                                   centred on white, as the other Tux Paint runs
  --config experiments/tuxpaint_naflex.py:budgets=16              NaFlex at one budget (exactly 16 tokens, as fixed)
  --config experiments/tuxpaint_naflex.py:loss=clip               InfoNCE instead of the sigmoid loss
  --config experiments/tuxpaint_naflex.py:size=test               tiny model for tests

Both modes share the model (same parameters: a 4×4 learned position table, resized per image under NaFlex), the
captions, the augmentation and the schedule; docs/naflex.md has the comparison over seeds.
"""
from vlm_jax.config import config_args, small_run
from vlm_jax.data.ops import STYLE_AUGMENT
from vlm_jax.objectives.contrastive import apply_loss_preset

SIZES = {
    # image tower, text tower, embedding dim
    "test": (dict(width=32, depth=1, mlp_dim=64, num_heads=2), dict(width=32, depth=1, mlp_dim=64, num_heads=2), 32),
    "small": (dict(width=128, depth=4, mlp_dim=512, num_heads=4), dict(width=128, depth=2, mlp_dim=512, num_heads=4),
              128),
}
PATCH, IMAGE_SIZE = 8, 32  # fixed resolution: 4 × 4 = 16 patches


def _budgets(text: str) -> tuple[int, ...]:
    return tuple(int(b) for b in str(text).replace("+", ",").split(",") if b)


def get_config(arg=None):
    """`arg`: mode=naflex|fixed, budgets=9+16+25 (training budgets), eval_budgets=9+16+25+36, loss=siglip|clip,
    size=small|test, steps=N, batch=N, seed=N."""
    arg = config_args(arg, mode="naflex", budgets="9+16+25", eval_budgets="9+16+25+36", loss="siglip",
                      size="small", steps=1500, batch=128, seed=0)
    if arg.mode not in ("naflex", "fixed"):
        raise ValueError(f"mode must be 'naflex' or 'fixed', got {arg.mode!r}")
    image, text, embed_dim = SIZES[arg.size]
    c = small_run("contrastive", arg.steps, arg.batch)
    c.seed = arg.seed
    c.data = dict(name="tuxpaint", data_dir="", image_size=IMAGE_SIZE, text_len=32, augment=STYLE_AUGMENT)
    if arg.mode == "naflex":
        c.data.naflex = dict(budgets=_budgets(arg.budgets), patch=PATCH, eval_budgets=_budgets(arg.eval_budgets))
    grid = IMAGE_SIZE // PATCH
    c.model = dict(image=dict(posemb="learn", posemb_grid=grid, pool_type="map", patch_size=(PATCH, PATCH), **image),
                   text=dict(vocab_size=0, causal=True, pool_type="last", max_len=32, **text), embed_dim=embed_dim)
    loss = apply_loss_preset(c, arg.loss)
    c.optim.b2 = loss["b2"]
    c.evals = dict(batch_size=128, sets=["tuxpaint"], templates=["{}"])
    if arg.size == "test":
        c.log_every = 1
        c.evals.batch_size = 64
    return c
