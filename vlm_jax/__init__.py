"""vlm_jax: vision-language pretraining in JAX. Importing it sets XLA:CPU defaults (before any backend starts)."""
import os

# XLA:CPU's default scheduler orders ops for concurrency and keeps many buffers alive: the memory-optimised one cut
# the tiny CLIP step's peak RSS from 5.19 to 2.44 GiB and B/16's from 6.34 to 5.42 GiB at the same or better speed
# (2-core Zen 5, 2026-11-30, benchmarks/vs_open_clip.py). A flag the user sets in XLA_FLAGS wins.
XLA_DEFAULTS = {"xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"}


def _set_xla_defaults() -> None:
    flags = os.environ.get("XLA_FLAGS", "")
    extra = [f"--{k}={v}" for k, v in XLA_DEFAULTS.items() if k not in flags]
    if extra:
        os.environ["XLA_FLAGS"] = " ".join([flags, *extra]).strip()


_set_xla_defaults()


def load(workdir, step=None, mesh=None, overrides=()):
    """A trained run (model, parameters, preprocessing, embed/classify/retrieve/caption): see `vlm_jax.api`."""
    from vlm_jax.api import load as _load

    return _load(workdir, step=step, mesh=mesh, overrides=overrides)
