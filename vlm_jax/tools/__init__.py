"""Command-line tools: `python -m vlm_jax.tools.dryrun` (compile for a TPU topology without a TPU)."""
