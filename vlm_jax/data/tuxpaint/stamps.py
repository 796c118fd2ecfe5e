"""The unpacked stamps: descriptions parsed into captions and translations, pictures read (PNG, or SVG through
resvg) and squared, the held-out split, and concept ids (stamps whose captions read the same share one)."""
from __future__ import annotations

import collections
import dataclasses
import io
import re
import unicodedata
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from vlm_jax.data import emoji

VARIANT_SUFFIXES = ("_mirror", "_flip")
TEST_FRACTION = 0.1
SPLIT_SEED = 0
SVG_DPI = 96.0
SVG_MIN_SIDE = 256  # SVGs whose longer side is smaller are rasterised with a zoom
_LANG_LINE = re.compile(r"^([A-Za-z]{2,3}(?:_[A-Za-z]{2,3})?(?:@[A-Za-z]+)?)\.utf8=(.*)$")


@dataclasses.dataclass(frozen=True)
class Stamp:
    """One stamp: its path under stamps/ without suffix, picture file, caption, translations and category."""

    path: str
    picture: Path
    caption: str
    translations: dict[str, str]
    category: str


def parse_description(text: str) -> tuple[str | None, dict[str, str]]:
    """A stamp .txt → (English caption or None, {lang: translation}); see the package docstring."""
    lines = [line.strip() for line in text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    lines = [line for line in lines if line]
    if not lines or _LANG_LINE.match(lines[0]):
        return None, {}
    translations = {}
    for line in lines[1:]:
        m = _LANG_LINE.match(line)
        if m and m.group(2).strip():
            translations[m.group(1)] = m.group(2).strip()
    return lines[0], translations


def scan(root: str | Path) -> tuple[list[Stamp], collections.Counter]:
    """Stamps under `root` (sorted by path) and the counts of what was skipped, by reason."""
    root = Path(root)
    skipped: collections.Counter = collections.Counter()
    stamps = []
    texts = {p.with_suffix("") for p in root.rglob("*.txt")}
    for stem in {p.with_suffix("") for p in root.rglob("*") if p.suffix in (".png", ".svg")} - texts:
        skipped["variant" if stem.name.endswith(VARIANT_SUFFIXES) else "no_caption"] += 1
    for stem in sorted(texts):
        picture = next((stem.with_suffix(s) for s in (".png", ".svg") if stem.with_suffix(s).is_file()), None)
        if picture is None:
            skipped["no_picture"] += 1
            continue
        try:
            caption, translations = parse_description(stem.with_suffix(".txt").read_bytes().decode("utf-8"))
        except UnicodeDecodeError:
            caption, translations = None, {}
        if caption is None:
            skipped["caption"] += 1
            continue
        rel = stem.relative_to(root)
        stamps.append(Stamp(rel.as_posix(), picture, caption, translations, rel.parts[0] if len(rel.parts) > 1
                            else ""))
    return stamps, skipped


def load_rgba(path: str | Path) -> Image.Image:
    """A PNG, or an SVG rasterised with resvg (96 dpi, longer side >= SVG_MIN_SIDE, no system fonts), as RGBA."""
    path = Path(path)
    if path.suffix != ".svg":
        with Image.open(path) as im:
            return im.convert("RGBA")
    import resvg_py

    def render(zoom: float | None = None) -> Image.Image:
        data = resvg_py.svg_to_bytes(svg_path=str(path), dpi=SVG_DPI, skip_system_fonts=True, zoom=zoom)
        with Image.open(io.BytesIO(bytes(data))) as im:
            return im.convert("RGBA")

    im = render()
    if max(im.size) < SVG_MIN_SIDE:
        im = render(float(np.ceil(SVG_MIN_SIDE / max(im.size))))
    return im


def render(stamp: Stamp, size: int) -> np.ndarray | None:
    """uint8 [size, size, 3]: composited on white, cropped to drawn pixels, squared; None when unreadable/empty."""
    try:
        im = load_rgba(stamp.picture)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None
    if im.getchannel("A").getbbox() is None:
        return None
    return emoji.to_square_rgb(im, size)


def render_native(stamp: Stamp, size: int, margin: float = 0.04) -> np.ndarray | None:
    """uint8 [h, w, 3] at the stamp's own aspect ratio, longer side `size`: composited on white, cropped to drawn
    pixels with the margin `emoji.to_square_rgb` adds (NaFlex data; `render` is this centred on a white square)."""
    try:
        im = load_rgba(stamp.picture)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None
    return native_rgb(im, size, margin)


def native_rgb(im: Image.Image, size: int, margin: float = 0.04) -> np.ndarray | None:
    """An RGBA picture → uint8 [h, w, 3] at its own aspect ratio, longer side `size` (`render_native`'s layout);
    None when nothing is drawn."""
    box = im.getchannel("A").getbbox()
    if box is None:
        return None
    im = im.crop(box)
    w, h = im.size
    pad = int(round(margin * max(w, h)))
    canvas = Image.new("RGBA", (w + 2 * pad, h + 2 * pad), (255, 255, 255, 255))
    canvas.alpha_composite(im, (pad, pad))
    rgb = canvas.convert("RGB")
    scale = size / max(rgb.size)
    target = (max(1, round(rgb.size[0] * scale)), max(1, round(rgb.size[1] * scale)))
    if target != rgb.size:
        rgb = rgb.resize(target, Image.Resampling.BOX)
    return np.asarray(rgb)


def caption_key(caption: str) -> str:
    """What makes two captions the same text to the model: its tokenizer's normalisation (nmt_nfkc_cf: NFKC, case
    folded, whitespace runs as one space), so "The letter A." and "The letter a." are one caption."""
    return " ".join(unicodedata.normalize("NFKC", caption).casefold().split())


def split_stamps(stamps: list[Stamp], test_fraction: float = TEST_FRACTION, seed: int = SPLIT_SEED) -> set[str]:
    """Paths of the held-out stamps: round(test_fraction * n) of each category's n stamps, drawn (seed) among
    the stamps whose caption (`caption_key`) no other stamp has, so test captions are distinct and never train
    captions (retrieval over the test captions has no ties). Deterministic given the stamps and the seed."""
    counts = collections.Counter(caption_key(s.caption) for s in stamps)
    rng = np.random.default_rng(seed)
    test: set[str] = set()
    for category in sorted({s.category for s in stamps}):
        members = sorted((s for s in stamps if s.category == category), key=lambda s: s.path)
        unique = [s.path for s in members if counts[caption_key(s.caption)] == 1]
        n = min(int(round(test_fraction * len(members))), len(unique))
        if n:
            test.update(str(p) for p in rng.choice(unique, size=n, replace=False))
    return test


def concept_ids(ids: Sequence[int], captions: Sequence[str | None]) -> dict[int, int]:
    """Stamp id → concept id: the smallest id among the stamps with the same caption (`caption_key`), so stamps
    that read the same are one concept (positives for label-sharing contrastive losses, never ITM negatives).
    A missing caption (None) keeps the stamp's own id."""
    first: dict[str, int] = {}
    for i, c in sorted(zip(map(int, ids), captions), key=lambda pair: pair[0]):
        if c is not None:
            first.setdefault(caption_key(c), i)
    return {int(i): first[caption_key(c)] if c is not None else int(i) for i, c in zip(ids, captions)}
