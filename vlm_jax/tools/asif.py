"""ASIF zero-shot classification (issue 33, part 6; `evals.asif`): a trained run's image features (e.g. the MAE
run's encoder, trained on images alone) and the packaged MiniLM sentence encoder (trained on text alone), made
comparable through anchor pairs — the training-style emoji drawings of the seen concepts with the caption
"an emoji of <name>." — and evaluated on the held-out OpenMoji drawings (the emoji/cross set, all concepts as
classes) like the trained models' zero-shot evaluator.

  python -m vlm_jax.tools.asif --image-run runs/emoji_mae [--anchors 0] [--k 100] [--p 8] [--json asif.json]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

TEMPLATE = "an emoji of {}."


def anchor_pairs(data: Any, count: int, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """(float images [A, S, S, 3], captions [A]) of the training styles' seen concepts; `count` evenly drawn
    (0: all)."""
    from vlm_jax.data import emoji_tfds
    from vlm_jax.data.base import prep_images

    images, texts = [], []
    for style in data.train_styles:
        split = emoji_tfds.load_split(data.data_dir, style, 64)
        keep = np.flatnonzero(np.asarray(split["seen"], bool))
        images.append(np.asarray(split["image"])[keep])
        texts += [TEMPLATE.format(n.decode() if isinstance(n, bytes) else str(n))
                  for n in np.asarray(split["name"])[keep]]
    images = np.concatenate(images)
    if count and count < len(texts):
        pick = np.sort(np.random.default_rng(seed).choice(len(texts), count, replace=False))
        images, texts = images[pick], [texts[i] for i in pick]
    return prep_images(images, data.image_size), texts


def evaluate(run: Any, anchors: int, k: int, p: float, text_encoder: Any = None) -> dict[str, float]:
    """Top-1 / top-5 of ASIF on emoji/cross (all and non-flag queries) with `run`'s image features."""
    import ml_collections

    from vlm_jax.data.base import get
    from vlm_jax.evals.asif import ASIF, minilm_encoder

    data = get(ml_collections.ConfigDict(dict(name="emoji", image_size=run.image_size,
                                              train_styles=("noto", "twitter", "facebook"))))
    cross = data.eval_sets(["emoji"])["emoji/cross"]
    images, texts = anchor_pairs(data, anchors)
    asif = ASIF(run.image_features, text_encoder or minilm_encoder(), images, texts, k, p)
    scores = asif.scores(cross.images, [TEMPLATE.format(n) for n in cross.class_names])
    top = np.argsort(-scores, axis=1, kind="stable")[:, :5]
    hits = {n: np.any(top[:, :n] == cross.labels[:, None], axis=1) for n in (1, 5)}
    out = {"anchors": float(len(texts)), "k": float(k), "p": float(p)}
    for name, mask in (("all", np.ones(len(hits[1]), bool)), ("nonflag", cross.subsets["nonflag"])):
        for n in (1, 5):
            out[f"emoji/cross/{name}/top@{n}"] = float(np.mean(hits[n][mask]))
    return out


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-run", required=True, help="a trained run whose image features ASIF reads")
    parser.add_argument("--anchors", type=int, default=0, help="anchor pairs drawn evenly (0: all)")
    parser.add_argument("--k", type=int, default=100, help="similarities kept per relative representation")
    parser.add_argument("--p", type=float, default=8.0, help="the exponent of the kept similarities")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    from vlm_jax.api import RunLoadError, load

    try:
        run = load(args.image_run)
    except RunLoadError as exc:
        raise SystemExit(str(exc)) from exc
    out = evaluate(run, args.anchors, args.k, args.p)
    for key, value in out.items():
        print(f"{key}: {100 * value:.1f}" if "top@" in key else f"{key}: {value:g}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
