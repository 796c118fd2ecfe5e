"""Captions of image files (or answers to a prompt) from a trained image-to-text run (CoCa, CapPa, PaLI, …).

  python -m vlm_jax.tools.caption --workdir runs/emoji_cappa --image a.png b.png [--beam 4] [--sample --temperature 0.7]
  python -m vlm_jax.tools.caption --workdir runs/mt_encdec --image a.png --prompt "which group?"
  python -m vlm_jax.tools.caption --workdir runs/mt_encdec --prompt "translate to de: red apple"   (text only)

Images are cropped to their drawn pixels (transparent or, if opaque, white background removed), centred on a
white square and resized to the run's resolution: the preparation of the training drawings. Reads the run's config.json and newest checkpoint.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np


def load_image(path: str | Path, size: int, prepared_size: int = 64) -> np.ndarray:
    """float32 [size, size, 3] in [-1, 1], prepared like the training drawings: cropped to its drawn pixels
    (alpha > 0; an opaque image: its non-white pixels), centred on a white square with a margin, stored size,
    then resized to the model's."""
    from PIL import Image

    from vlm_jax.data import emoji, ops

    with Image.open(path) as im:
        rgba = im.convert("RGBA")
    arr = np.asarray(rgba)
    if arr[..., 3].min() == 255:  # opaque: what is not (near) white is the drawing
        alpha = np.where((arr[..., :3] < 250).any(-1), 255, 0).astype(np.uint8)
        if alpha.any():
            rgba = Image.fromarray(np.dstack([arr[..., :3], alpha]), "RGBA")
    return ops.normalize(ops.resize(emoji.to_square_rgb(rgba, prepared_size), size))


def load_run(workdir: str | Path, overrides: list[str] | None = None) -> tuple[Any, Any, int]:
    """(Setup, params, step) of a trained run: its config.json (with `overrides`, KEY=VALUE) and its newest
    readable checkpoint."""
    import ml_collections

    from vlm_jax.config import apply_overrides
    from vlm_jax.train.checkpoint import Checkpointer
    from vlm_jax.train.trainer import Setup, finalize_config

    workdir = Path(workdir)
    if not (workdir / "config.json").exists():
        raise SystemExit(f"{workdir}/config.json not found: is this a training workdir?")
    config = finalize_config(ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text())))
    if overrides:
        config = apply_overrides(config, list(overrides))
    setup = Setup(config)
    ckpt = Checkpointer(workdir / "checkpoints", every_steps=0, async_save=False)
    try:
        state, step = ckpt.restore_state(setup.abstract_state(config.seed))
    finally:
        ckpt.close()
    return setup, state.params, step


def caption_files(workdir: str | Path, images: list[str], beam: int = 1, sample: bool = False,
                  temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
                  prompt: str | None = None) -> list[str]:
    """Captions of image files (answers to `prompt` for a prompted run; no images: one text-only answer) by the
    run in `workdir`."""
    setup, params, _ = load_run(workdir)
    objective = setup.objective
    if not hasattr(objective, "caption_fns"):
        raise SystemExit(f"objective {setup.config.objective!r} does not generate text")
    fns = objective.caption_fns
    if prompt is not None and fns.tokenize_prompt is None:
        raise SystemExit(f"objective {setup.config.objective!r} takes no prompt (train a prompted one: 'pali')")
    if prompt is None and fns.tokenize_prompt is not None:
        raise SystemExit("this run answers prompts: give --prompt (e.g. \"caption en\")")
    if not images and prompt is None:
        raise SystemExit("give --image files (or a --prompt for a text-only answer)")
    fns.beam_size = beam
    if sample:
        fns.sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    size = objective.data.image_size
    batch = np.stack([load_image(p, size) for p in images]) if images else np.zeros((1, size, size, 3), np.float32)
    return fns.generate(params, batch, prompt)


def main(argv: list[str] | None = None) -> None:
    """CLI entry point."""
    parser = argparse.ArgumentParser(prog="python -m vlm_jax.tools.caption", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--image", nargs="+", default=[], help="image files (none: a text-only prompt)")
    parser.add_argument("--prompt", default=None, help="the task prompt of a prompted (PaLI) run")
    parser.add_argument("--beam", type=int, default=1, help="beam size (1: greedy)")
    parser.add_argument("--sample", action="store_true", help="sample instead of greedy / beam search")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top_k", type=int, default=0)
    parser.add_argument("--top_p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    captions = caption_files(args.workdir, args.image, args.beam, args.sample, args.temperature, args.top_k,
                             args.top_p, args.seed, args.prompt)
    for path, text in zip(args.image or ["(text only)"], captions):
        print(f"{path}\t{text}")


if __name__ == "__main__":
    main()
