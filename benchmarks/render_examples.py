"""Writes docs/rendered_captions.png: CLIPPO's text inputs (64 px, Unifont 16) for one emoji in 9 languages.

Run: scripts/vlm python benchmarks/render_examples.py
"""
from pathlib import Path

import numpy as np
from PIL import Image

from vlm_jax.data import multilingual
from vlm_jax.data.render_text import TextRenderer

LANGS = ("en", "de", "es", "fr", "ko", "ja", "zh", "it", "ru")


def main() -> None:
    """Renders the names of 🧑‍🚀 and 😀 in each language, as the model sees them, scaled ×3."""
    renderer = TextRenderer(image_size=64)
    rows = []
    for char in ("😀", "🧑‍🚀", "🍣"):
        names = [multilingual.name_of(char, lang) or "" for lang in LANGS]
        tiles = renderer.render_batch([f"an emoji of {names[0]}."] + names)
        rows.append(np.concatenate([np.pad(t, ((2, 2), (2, 2), (0, 0)), constant_values=255) for t in tiles], 1))
    grid = np.concatenate(rows, 0)
    out = Path(__file__).resolve().parents[1] / "docs" / "rendered_captions.png"
    out.parent.mkdir(exist_ok=True)
    Image.fromarray(grid).resize((grid.shape[1] * 3, grid.shape[0] * 3), Image.NEAREST).save(out)
    print(f"{out}: columns = English template, then {', '.join(LANGS)}")


if __name__ == "__main__":
    main()
