"""Trainer-level config defaults; experiment configs override these and may not add unknown keys."""
from __future__ import annotations

import ml_collections

from vlm_jax.train import init_from

# No weight decay on biases, norm scales, position embeddings, pooling probes / cls tokens, and the top-level
# logit temperature `t` and bias `b` (paths are "img/.../bias", "t", "b").
WD_EXCLUDE = r"(bias|scale|pos_embedding|probe|(^|/)cls$|(^|/)[tb]$)"

# Sections validated by the objective / model / data code that consumes them.
OPEN_SECTIONS = frozenset({"model", "data", "evals", "loss"})


def trainer_defaults() -> ml_collections.ConfigDict:
    """Every trainer key with its default."""
    c = ml_collections.ConfigDict()
    c.objective = "contrastive"
    c.seed = 0
    c.total_steps = 1000
    c.batch_size = 256  # global batch (all processes)
    c.grad_accum_steps = 1  # micro-batches per step, equal to the big batch (contrastive: GradCache, all negatives)
    c.mesh = [("data", -1), ("fsdp", 1), ("tensor", 1)]
    c.sharding_rules = ml_collections.FieldReference(None, field_type=list)  # None → sharding.DEFAULT_RULES
    c.dcn_mesh = []  # slices per axis across the slow network, e.g. [("data", 2)] for 2 TPU slices
    c.fsdp_min_size = 2 ** 12  # arrays with fewer elements stay replicated
    # "largest": fsdp splits each array's largest divisible dim; "rules": the rules' dim; "2d": the fsdp axis is split
    # into two mesh axes (a × b devices) so an array no dim of which the fsdp size divides is split over two dims
    c.fsdp_dims = "largest"

    c.optim = ml_collections.ConfigDict(dict(
        name="adamw", lr=1e-3, b1=0.9, b2=0.999, eps=1e-8, momentum=0.0, weight_decay=1e-4,
        wd_exclude=WD_EXCLUDE, clip_norm=1.0, schedule="cosine",
        warmup_steps=100, end_lr_factor=0.0, lr_mults={}, freeze=""))

    c.init_from = ml_collections.ConfigDict(init_from.DEFAULTS)  # another run's weights to start from (init_from.py)

    c.log_every = 10
    c.eval_every = 0  # 0 → evaluate only at the end
    c.nonfinite = "stop"  # "stop": raise naming the step; "skip": drop the update and count it
    c.checkpoint = ml_collections.ConfigDict(dict(every_steps=500, keep=3, keep_period=0, async_save=True))
    c.progress = True
    c.tensorboard = True  # event files (scalars of every metrics.jsonl record, input grids) in the workdir
    # MFU's denominator, FLOP/s of all devices together; 0: the chip table (TPU/GPU) or a matmul probe (CPU)
    c.peak_flops = 0.0

    c.model = ml_collections.ConfigDict()
    c.loss = ml_collections.ConfigDict()
    c.data = ml_collections.ConfigDict()
    c.evals = ml_collections.ConfigDict()
    return c
