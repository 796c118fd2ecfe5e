"""Paper-scale CLIP / SigLIP two-tower configs (ViT image tower + text transformer), for pods and dry runs.

The data stream is `synthetic` (shapes only) until a web-scale image–text source is wired in; the configs
are used by `python -m vlm_jax.tools.dryrun` and throughput benchmarks.

  --config experiments/two_tower_scale.py:variant=B/16,loss=clip,batch=32768       CLIP B/16
  --config experiments/two_tower_scale.py:variant=So400m/14,loss=siglip            SigLIP So400m/14
  --config experiments/two_tower_scale.py:variant=So400m/16,loss=siglip,naflex=256+1024
                                              SigLIP 2 NaFlex: native-aspect images, a budget of 256 or 1024 patches
                                              drawn per batch; the learned position table is (res / patch)² and
                                              resized per image
"""
import ml_collections

from vlm_jax.config import config_args
from vlm_jax.objectives.contrastive import apply_loss_preset, loss_preset
from vlm_jax.sharding import fsdp_mesh
from vlm_jax.variants import parse_variant

# Image-tower size → (text width, depth, mlp, heads, embed dim), following CLIP / SigLIP pairings.
TEXT_FOR = {
    "Ti": (256, 12, 1024, 4, 256),
    "S": (384, 12, 1536, 6, 384),
    "B": (512, 12, 2048, 8, 512),
    "L": (768, 12, 3072, 12, 768),
    "So400m": (1152, 27, 4304, 16, 1152),
    "H": (1024, 24, 4096, 16, 1024),
    "g": (1024, 24, 4096, 16, 1024),
    "G": (1280, 32, 5120, 20, 1280),
}
TEXT_DATA = {"clip": dict(vocab=49_408, text_len=77), "siglip": dict(vocab=32_000, text_len=64)}  # tokenizer


def get_config(arg=None):
    """`arg`: variant=B/16, loss=clip|siglip, batch, steps, res (image px), fsdp (-1: all devices), remat,
    naflex (training budgets in patches, e.g. 256+1024; empty: fixed resolution)."""
    arg = config_args(arg, variant="B/16", loss="clip", batch=32_768, steps=20_000, res=224, fsdp=-1,
                      remat="minimal", naflex="")
    loss = loss_preset(arg.loss)
    image = parse_variant(arg.variant)
    name = arg.variant.partition("/")[0]
    tw, td, tm, th, embed = TEXT_FOR[name]
    lo = TEXT_DATA[arg.loss]
    common = dict(scan=True, remat_policy=arg.remat, dtype_mm="bfloat16", residual_dtype="bfloat16")

    c = ml_collections.ConfigDict()
    c.objective = "contrastive"
    c.seed = 0
    c.total_steps = arg.steps
    c.batch_size = arg.batch
    c.mesh = fsdp_mesh(arg.fsdp)
    c.log_every = 50
    c.data = dict(name="synthetic", image_size=arg.res, text_len=lo["text_len"], vocab_size=lo["vocab"])
    budgets = tuple(int(b) for b in str(arg.naflex).replace("+", ",").split(",") if b)
    naflex = {}
    if budgets:
        patch = image.get("patch_size", (16, 16))[0]
        c.data.naflex = dict(budgets=budgets, patch=patch)
        naflex = dict(posemb_grid=arg.res // patch)
    c.model = dict(
        image=dict(posemb="learn", pool_type="map" if arg.loss == "siglip" else "tok", **image, **common, **naflex),
        text=dict(vocab_size=lo["vocab"], width=tw, depth=td, mlp_dim=tm, num_heads=th, causal=arg.loss == "clip",
                  pool_type="last", max_len=lo["text_len"], **common),
        embed_dim=embed)
    apply_loss_preset(c, arg.loss)
    c.optim = dict(name="adamw", lr=1e-3, b2=loss["b2"], weight_decay=1e-4, warmup_steps=min(2_000, arg.steps // 10),
                   schedule="cosine", clip_norm=1.0)
    c.checkpoint = dict(every_steps=1_000, keep=3)
    c.evals = dict(sets=[])
    return c
