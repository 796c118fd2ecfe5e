"""Checkpoints of other libraries in and out: HF transformers (CLIP, SigLIP), open_clip (CLIP), as vlm_jax
two-tower model fields plus parameter trees (`Imported`), with NumPy only (no torch)."""
