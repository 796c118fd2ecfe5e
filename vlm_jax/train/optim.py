"""Optax optimizer and learning-rate schedule from config; parameter groups selected by regex on paths."""
from __future__ import annotations

import re
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

# Direction-only transforms (no learning rate, no sign): the chain below adds decay, schedule and sign. Weight decay
# is decoupled (Loshchilov & Hutter 2019: added after the optimizer's scaling) except for "adam", whose decay is
# the classic coupled L2 term (added to the gradient before Adam's scaling, as torch.optim.Adam's weight_decay).
COUPLED_DECAY = ("adam",)
OPTIMIZERS = {
    "adamw": lambda c: optax.scale_by_adam(b1=c.b1, b2=c.b2, eps=c.eps),
    "adam": lambda c: optax.scale_by_adam(b1=c.b1, b2=c.b2, eps=c.eps),
    "sgd": lambda c: optax.trace(decay=c.momentum) if c.momentum else optax.identity(),
    "lion": lambda c: optax.scale_by_lion(b1=c.b1, b2=c.b2),
    "adafactor": lambda c: optax.scale_by_factored_rms(),
}
SCHEDULES = ("cosine", "rsqrt", "linear", "constant")


def path_str(path: tuple[Any, ...]) -> str:
    """'img/Transformer/block00/kernel' style name of a pytree path."""
    parts = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
    return "/".join(parts)


def path_mask(params: Any, pattern: str | None) -> Any:
    """Boolean tree: True where the parameter path matches `pattern` (re.search)."""
    regex = re.compile(pattern) if pattern else None
    return jax.tree_util.tree_map_with_path(
        lambda p, _: bool(regex and regex.search(path_str(p))), params)


def weight_decay_mask(params: Any, config: ml_collections.ConfigDict) -> Any:
    """Boolean tree: True where decoupled weight decay applies (paths not matching `config.wd_exclude`)."""
    return jax.tree.map(lambda excluded: not excluded, path_mask(params, config.wd_exclude))


def make_schedule(config: ml_collections.ConfigDict, total_steps: int) -> Callable[[Any], jax.Array]:
    """Linear warmup followed by cosine / rsqrt / linear decay or a constant."""
    name, peak, warmup = config.schedule, config.lr, int(config.warmup_steps)
    if name not in SCHEDULES:
        raise ValueError(f"Unknown schedule '{name}'; valid: {list(SCHEDULES)}")
    end = peak * config.end_lr_factor

    def schedule(step: Any) -> jax.Array:
        step = jnp.asarray(step, jnp.float32)
        warm = peak * jnp.minimum(1.0, (step + 1.0) / max(warmup, 1))
        frac = jnp.clip((step - warmup) / max(total_steps - warmup, 1), 0.0, 1.0)
        if name == "cosine":
            decayed = end + (peak - end) * 0.5 * (1.0 + jnp.cos(jnp.pi * frac))
        elif name == "linear":
            decayed = peak + (end - peak) * frac
        elif name == "rsqrt":
            decayed = peak * jnp.sqrt(max(warmup, 1) / jnp.maximum(step + 1.0, max(warmup, 1)))
        else:
            decayed = jnp.asarray(peak, jnp.float32)
        return jnp.where(step < warmup, warm, decayed)

    return schedule


def make_optimizer(config: ml_collections.ConfigDict, total_steps: int,
                   params: Any) -> tuple[optax.GradientTransformation, Callable[[Any], jax.Array]]:
    """Clip → optimizer → decoupled weight decay (masked) → lr schedule; frozen and lr-scaled groups. "adam": clip →
    L2 decay (masked) → Adam → schedule."""
    if config.name not in OPTIMIZERS:
        raise ValueError(f"Unknown optimizer '{config.name}'; valid: {sorted(OPTIMIZERS)}")
    schedule = make_schedule(config, total_steps)
    chain = []
    if config.clip_norm:
        chain.append(optax.clip_by_global_norm(config.clip_norm))
    decay = [optax.add_decayed_weights(config.weight_decay, mask=weight_decay_mask(params, config))] \
        if config.weight_decay else []
    coupled = config.name in COUPLED_DECAY
    chain += (decay if coupled else []) + [OPTIMIZERS[config.name](config)] + ([] if coupled else decay)
    chain.append(optax.scale_by_schedule(lambda s: -schedule(s)))
    for pattern, mult in dict(config.lr_mults or {}).items():
        chain.append(optax.masked(optax.scale(float(mult)), path_mask(params, pattern)))
    tx = optax.chain(*chain)
    if config.freeze:
        frozen = path_mask(params, config.freeze)
        labels = jax.tree.map(lambda f: "frozen" if f else "train", frozen)
        tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
    return tx, schedule
