"""Captions of image files (or answers to a prompt) from a trained image-to-text run (CoCa, CapPa, PaLI, …).

  python -m vlm_jax.tools.caption --workdir runs/emoji_cappa --image a.png b.png [--beam 4] [--sample --temperature 0.7]
  python -m vlm_jax.tools.caption --workdir runs/mt_encdec --image a.png --prompt "which group?"
  python -m vlm_jax.tools.caption --workdir runs/mt_encdec --prompt "translate to de: red apple"   (text only)

Images are cropped to their drawn pixels (transparent or, if opaque, white background removed), centred on a
white square and resized to the run's resolution: the preparation of the training drawings (a NaFlex run keeps
each image's aspect ratio within `--budget` patches). Reads the run's config.json and newest checkpoint.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np


def load_image(path: str | Path, size: int, prepared_size: int = 64) -> np.ndarray:
    """An image file prepared like the training drawings (`emoji.prepare_drawing`)."""
    from vlm_jax.data.emoji import prepare_drawing

    return prepare_drawing(path, size, prepared_size)


def load_run(workdir: str | Path, overrides: list[str] | None = None) -> tuple[Any, Any, int]:
    """(Setup, params, step) of a trained run (`vlm_jax.load`), exiting with its message when it cannot load."""
    from vlm_jax.api import RunLoadError, load

    try:
        run = load(workdir, overrides=overrides or ())
    except RunLoadError as exc:
        raise SystemExit(str(exc)) from exc
    return run.setup, run.params, run.step


def caption_files(workdir: str | Path, images: list[str], beam: int = 1, sample: bool = False,
                  temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
                  prompt: str | None = None, budget: int = 0) -> list[str]:
    """Captions of image files (answers to `prompt` for a prompted run; no images: one text-only answer) by the
    run in `workdir`; `budget`: patches per image for a NaFlex run (0: its largest evaluation budget)."""
    from vlm_jax.api import RunLoadError, load

    if not images and prompt is None:
        raise SystemExit("give --image files (or a --prompt for a text-only answer)")
    options = dict(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed) if sample else None
    try:
        run = load(workdir)
        if budget:
            if run.budget is None:
                raise ValueError(f"--budget {budget}: the run in {workdir} was trained at a fixed resolution")
            run.budget = budget
        return run.caption(list(images), prompt, beam, options)
    except (RunLoadError, TypeError, ValueError) as exc:
        raise SystemExit(str(exc)) from exc


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
    parser.add_argument("--budget", type=int, default=0,
                        help="NaFlex runs: patches per image at its own aspect ratio (default: the largest eval budget)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    captions = caption_files(args.workdir, args.image, args.beam, args.sample, args.temperature, args.top_k,
                             args.top_p, args.seed, args.prompt, args.budget)
    for path, text in zip(args.image or ["(text only)"], captions):
        print(f"{path}\t{text}")


if __name__ == "__main__":
    main()
