"""Paper-scale CLIPPO (one ViT for images and Unifont-rendered alt-text), for pods and dry runs.

Data is `synthetic` (shapes only) until a web-scale image–text source is wired in.
  --config experiments/clippo_scale.py:variant=B/16,batch=10240     CLIPPO B/16 (Tschannen et al. 2023)
"""
import ml_collections

from vlm_jax.config import config_args
from vlm_jax.objectives.contrastive import apply_loss_preset
from vlm_jax.sharding import fsdp_mesh
from vlm_jax.variants import parse_variant


def get_config(arg=None):
    """`arg`: variant, loss=clip|siglip, batch, steps, res, fsdp (-1: all devices), remat."""
    arg = config_args(arg, variant="B/16", loss="clip", batch=10_240, steps=250_000, res=224, fsdp=-1,
                      remat="full")
    image = parse_variant(arg.variant)
    c = ml_collections.ConfigDict()
    c.objective = "clippo"
    c.seed = 0
    c.total_steps = arg.steps
    c.batch_size = arg.batch
    c.mesh = fsdp_mesh(arg.fsdp)
    c.log_every = 50
    c.data = dict(name="synthetic", image_size=arg.res, text_format="render", text_image_size=arg.res)
    c.model = dict(image=dict(posemb="learn", pool_type="map", scan=True, remat_policy=arg.remat,
                              dtype_mm="bfloat16", residual_dtype="bfloat16", **image),
                   embed_dim=image["width"])
    apply_loss_preset(c, arg.loss)
    c.optim = dict(name="adamw", lr=1e-3, b2=0.95, weight_decay=1e-4, warmup_steps=min(10_000, arg.steps // 10),
                   schedule="rsqrt", clip_norm=1.0)
    c.checkpoint = dict(every_steps=1_000, keep=3)
    c.evals = dict(sets=[])
    return c
