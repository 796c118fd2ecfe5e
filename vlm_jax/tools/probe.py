"""Compositional probes of trained runs (issue 33): count, relation, attribute binding and word order on labelled
emoji scenes (`data.scenes.labelled_scene`, held-out OpenMoji drawings of the seen concepts, flags left out), each
true caption against a one-respect foil (`evals.compositional`); one markdown row per run, chance 50%, and a row
with every scene blanked (white): what the run prefers from the captions alone, so a score above chance that
survives blanking is a text prior, not perception.

  python -m vlm_jax.tools.probe --workdir runs/emoji_clip runs/emoji_siglip [--scenes 500] [--json probes.json]
  python -m vlm_jax.tools.probe --workdir runs/mt_encdec --prompt "caption en"     (a prompted run)

Embedding runs score the pair logit, generative runs the caption's mean log-probability per token (`--how`).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

SCENE_SIZE = 64  # the prepared drawings' size; runs resize the scenes to their own resolution


def probe_scenes(count: int, seed: int, data_dir: str | None = None, style: str = "openmoji") -> tuple[list, list]:
    """(labelled scenes, the concept names they index) from `style`'s drawings of the seen, non-flag concepts."""
    from vlm_jax.data import emoji_tfds, scenes
    from vlm_jax.data.base import default_data_dir
    from vlm_jax.data.scene_pairs import PREPARED, seen_drawings

    data_dir = data_dir or default_data_dir()
    emoji_tfds.prepare(data_dir, image_size=PREPARED)
    drawings, names = seen_drawings(data_dir, (style,))
    return scenes.labelled_scenes(drawings, names, count, SCENE_SIZE, seed, distractors=1), names


def probe_run(run: Any, scenes: list, names: list, how: str = "auto", prompt: str | None = None,
              blank: bool = False) -> dict[str, float]:
    """Accuracy by probe kind of one loaded run (`vlm_jax.load`); `blank`: every scene replaced by the empty white
    canvas — the run's preference between the captions from the text alone (the control for text priors)."""
    import dataclasses

    from vlm_jax.evals.compositional import run_probes

    if blank:
        scenes = [dataclasses.replace(s, image=np.full_like(s.image, 255)) for s in scenes]
    result, _ = run_probes(scenes, names, lambda images, texts: run.match_scores(images, texts, how, prompt))
    return result


def table(rows: dict[str, dict[str, float]]) -> str:
    """Markdown: one row per run, accuracy (%) per kind with its item count in the header."""
    from vlm_jax.evals.compositional import KINDS

    first = next(iter(rows.values()))
    kinds = [k for k in (*KINDS, "all") if k in first]
    head = "| run | " + " | ".join(f"{k} ({int(first[k + '/items'])})" for k in kinds) + " |"
    lines = [head, "|---|" + "---:|" * len(kinds)]
    for name, r in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{100 * r[k]:.1f}" for k in kinds) + " |")
    lines.append("| chance | " + " | ".join("50.0" for _ in kinds) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", nargs="+", required=True, help="trained runs")
    parser.add_argument("--scenes", type=int, default=500, help="labelled scenes (4 or 3 items each)")
    parser.add_argument("--seed", type=int, default=0, help="the scenes' seed")
    parser.add_argument("--how", default="auto", choices=("auto", "embedding", "likelihood"))
    parser.add_argument("--prompt", default=None, help="the task prompt of a prompted run")
    parser.add_argument("--json", default=None, help="write {run: {kind: accuracy}} (and each run's blank-image "
                        "control) here")
    args = parser.parse_args(argv)
    from vlm_jax.api import RunLoadError, load

    scenes, names = probe_scenes(args.scenes, args.seed)
    rows = {}
    for workdir in args.workdir:
        try:
            run = load(workdir)
        except RunLoadError as exc:
            raise SystemExit(str(exc)) from exc
        rows[str(workdir)] = probe_run(run, scenes, names, args.how, args.prompt)
        rows[f"{workdir} (blank images)"] = probe_run(run, scenes, names, args.how, args.prompt, blank=True)
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
