"""Text rendered to pixels with GNU Unifont, as CLIPPO (Tschannen et al. 2023) feeds alt-text to its shared tower.

Font: `unifont.hex` (or `.hex.gz`) from the Debian `unifont` package, one plane-0 glyph per line,
`CODEPOINT:HEX`, 8x16 (32 hex digits) or 16x16 (64 hex digits), one bit per pixel, most significant bit left.
It is parsed once per path into dense tables (glyph columns, widths) so a caption is laid out and drawn with a
handful of vectorised NumPy operations.

Layout, in output pixels:
* The caption is cut to `max_chars`, NFC-normalised, then lowercased (when `lowercase`).
* Each glyph is trimmed to its ink: empty columns left and right of the drawn pixels are dropped, so glyphs are
  proportional (width w at 16 px; round(w * font_size / 16) at other sizes). A glyph without ink, and the space
  between words, is `min_glyph_width` wide (default font_size / 4: 4 px at 16). Consecutive glyphs are
  `spacing` pixels apart, so words are 2 * spacing + min_glyph_width apart.
* Words are runs of non-whitespace (`str.isspace`); any run of whitespace, newlines included, is one space.
  Words wrap greedily into lines of `image_size - 2 * margin` pixels; a word wider than a line starts a new
  line and is broken between glyphs. Lines are `font_size` tall with no gap; the first line's cell starts at
  y = margin and the first glyph's first inked column at x = margin. Lines that do not fit fully in the image
  are dropped (one line is still drawn, clipped, when not even one fits).
* Other sizes are nearest-neighbour resizes of the 16-px bitmaps: font_size 32 doubles every pixel exactly.
* Control characters, unassigned code points (per Python's `unicodedata`: Unicode 14 on Python 3.11, so the
  few Unicode 15 glyphs of Unifont 15 count as unassigned), code points the font lacks (surrogates, private
  use) and those outside plane 0 (e.g. emoji) are drawn as U+FFFD. Format characters (ZWJ, soft hyphen, BOM,
  ...), variation selectors and plane-14 tags are invisible and dropped. Combining marks are drawn as their
  own glyphs after the base (no overlay), as are Arabic letters (no shaping) and all other scripts.
* Ink is `ink` (black) on `background` (grey 127); output is RGB uint8. Rendering is deterministic.
"""
from __future__ import annotations

import functools
import gzip
import os
import unicodedata
from pathlib import Path
from typing import Sequence

import numpy as np

FONT_ENV = "VLM_JAX_UNIFONT"
FONT_CANDIDATES = ("/usr/share/unifont/unifont.hex", "/usr/share/unifont/unifont.hex.gz")
NUM_CODEPOINTS = 0x10000
REPLACEMENT = 0xFFFD
GLYPH_ROWS = 16
GLYPH_COLS = 16
_OTHER_PLANE = NUM_CODEPOINTS  # class-table slot for code points above plane 0
_TAG_PLANE = NUM_CODEPOINTS + 1  # slot for plane-14 tags and variation selectors (ignored)
_DRAW, _SPACE, _IGNORE = 0, 1, 2


def find_font(path: str | Path | None = None) -> Path:
    """The Unifont .hex(.gz) file: `path`, else $VLM_JAX_UNIFONT, else the Debian package's."""
    candidates = [path] if path is not None else ([os.environ[FONT_ENV]] if os.environ.get(FONT_ENV) else [])
    candidates = candidates or list(FONT_CANDIDATES)
    for candidate in candidates:
        if Path(candidate).is_file():
            return Path(candidate)
    raise FileNotFoundError(f"No Unifont .hex file among {candidates}: apt-get install unifont "
                            f"(scripts/setup.sh does) or set ${FONT_ENV}")


def _read_text(path: Path) -> str:
    """Contents of a .hex or .hex.gz file."""
    if path.suffix == ".gz":
        with gzip.open(path, "rt", encoding="ascii") as f:
            return f.read()
    return path.read_text(encoding="ascii")


def _decode(hex_rows: list[str], width: int) -> np.ndarray:
    """Bitmaps [n, 16, width] bool of same-width glyphs given as hex strings."""
    data = np.frombuffer(bytes.fromhex("".join(hex_rows)), np.uint8)
    return np.unpackbits(data.reshape(len(hex_rows), GLYPH_ROWS, width // 8), axis=-1).astype(bool)


def parse_hex(text: str) -> tuple[np.ndarray, np.ndarray]:
    """Glyphs [65536, 16, 16] bool (row, column; narrow glyphs in the left 8 columns) and presence [65536]."""
    glyphs = np.zeros((NUM_CODEPOINTS, GLYPH_ROWS, GLYPH_COLS), bool)
    present = np.zeros(NUM_CODEPOINTS, bool)
    by_width: dict[int, tuple[list[int], list[str]]] = {8: ([], []), 16: ([], [])}
    for line in text.splitlines():
        code, sep, bits = line.strip().partition(":")
        if not sep or code.startswith("#"):
            continue
        cp = int(code, 16)
        if cp >= NUM_CODEPOINTS:
            continue  # plane 1+ files (unifont_upper) are not used
        if len(bits) not in (32, 64):
            raise ValueError(f"Bad Unifont line for U+{code}: {len(bits)} hex digits (want 32 or 64)")
        codes, rows = by_width[len(bits) // 4]
        codes.append(cp)
        rows.append(bits)
    for width, (codes, rows) in by_width.items():
        if codes:
            glyphs[codes, :, :width] = _decode(rows, width)
            present[codes] = True
    return glyphs, present


@functools.lru_cache(maxsize=4)
def load_font(path: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Parsed Unifont (glyphs [65536, 16, 16] bool, presence [65536] bool), cached per path."""
    return parse_hex(_read_text(find_font(path)))


def _codepoint_classes(present: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per class-table slot: kind (draw / space / ignore) and the code point whose glyph is drawn."""
    kind = np.full(NUM_CODEPOINTS + 2, _DRAW, np.uint8)
    remap = np.arange(NUM_CODEPOINTS + 2, dtype=np.int32)
    for cp in range(NUM_CODEPOINTS):
        ch = chr(cp)
        category = unicodedata.category(ch)
        if ch.isspace():
            kind[cp] = _SPACE
        elif category == "Cf" or 0xFE00 <= cp <= 0xFE0F:
            kind[cp] = _IGNORE
        elif category in ("Cc", "Cn") or not present[cp]:
            remap[cp] = REPLACEMENT
    remap[_OTHER_PLANE] = REPLACEMENT
    kind[_TAG_PLANE] = _IGNORE
    remap[_TAG_PLANE] = REPLACEMENT
    return kind, remap


def _trim(glyphs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Glyph columns shifted left to the first inked column [65536, 16 cols, 16 rows], and ink widths."""
    inked = glyphs.any(axis=1)  # [cp, col]
    has_ink = inked.any(axis=1)
    left = np.where(has_ink, inked.argmax(axis=1), 0)
    right = np.where(has_ink, GLYPH_COLS - inked[:, ::-1].argmax(axis=1), 0)
    cols = np.arange(GLYPH_COLS)[None, :] + left[:, None]  # [cp, col] source column
    columns = np.take_along_axis(glyphs.transpose(0, 2, 1), np.minimum(cols, GLYPH_COLS - 1)[:, :, None], axis=1)
    columns &= (cols < GLYPH_COLS)[:, :, None]
    return columns, (right - left).astype(np.int32)


@functools.lru_cache(maxsize=4)
def _tables(path: str | Path | None) -> dict[str, np.ndarray]:
    """Font-size independent lookup tables for the font at `path`, cached."""
    glyphs, present = load_font(path)
    if not present[REPLACEMENT]:  # a font without U+FFFD: draw a hollow box instead
        glyphs, present = glyphs.copy(), present.copy()
        glyphs[REPLACEMENT] = False
        glyphs[REPLACEMENT, 2:14, 1:7] = True
        glyphs[REPLACEMENT, 3:13, 2:6] = False
        present[REPLACEMENT] = True
    kind, remap = _codepoint_classes(present)
    columns, width16 = _trim(glyphs)
    blank = np.zeros((1, GLYPH_ROWS), bool)  # the last column index: background
    return {"kind": kind, "remap": remap, "width16": width16,
            "columns": np.concatenate([columns.reshape(-1, GLYPH_ROWS), blank])}


@functools.lru_cache(maxsize=4)
def _pixel_table(path: str | Path | None, background: int, ink: int) -> np.ndarray:
    """Glyph columns as pixel values [65536 * 16 + 1, 16 rows] uint8 (last: a background column), cached."""
    return np.where(_tables(path)["columns"], np.uint8(ink), np.uint8(background))


def _round_half_up(x: np.ndarray) -> np.ndarray:
    """Nearest integer, halves up (deterministic, unlike banker's rounding)."""
    return np.floor(x + 0.5).astype(np.int32)


class TextRenderer:
    """Renders captions to square RGB uint8 images with Unifont (see the module docstring for the layout)."""

    def __init__(self, image_size: int = 224, font_size: int = 16, max_chars: int | None = None,
                 lowercase: bool = True, background: int = 127, ink: int = 0, spacing: int = 1,
                 min_glyph_width: int | None = None, margin: int = 1, font_path: str | Path | None = None):
        if image_size < 1 or font_size < 1 or spacing < 0 or margin < 0 or 2 * margin >= image_size:
            raise ValueError(f"Bad renderer sizes: image_size={image_size} font_size={font_size} "
                             f"spacing={spacing} margin={margin}")
        self.image_size, self.font_size, self.max_chars = image_size, font_size, max_chars
        self.lowercase, self.background, self.ink = lowercase, np.uint8(background), np.uint8(ink)
        self.spacing, self.margin = spacing, margin
        self.min_glyph_width = max(1, int(font_size / 4 + 0.5)) if min_glyph_width is None else min_glyph_width
        self.line_width = image_size - 2 * margin
        self.max_lines = max(1, self.line_width // font_size)
        tables = _tables(font_path)
        self._kind, self._remap = tables["kind"], tables["remap"]
        self._width16 = tables["width16"]
        scaled = np.maximum(1, _round_half_up(self._width16 * (font_size / GLYPH_ROWS)))
        self._width = np.where(self._width16 > 0, scaled, self.min_glyph_width).astype(np.int32)
        self._rows = None if font_size == GLYPH_ROWS else (
            (np.arange(font_size) + 0.5) * (GLYPH_ROWS / font_size)).astype(np.int32)
        self._identity_cols = font_size == GLYPH_ROWS and self.min_glyph_width <= GLYPH_COLS
        self._may_overflow = int(self._width.max()) > self.line_width
        self._pixels = _pixel_table(font_path, int(background), int(ink))

    def render(self, text: str) -> np.ndarray:
        """One caption as uint8 [S, S, 3]."""
        return self.render_batch([text])[0]

    def render_batch(self, texts: Sequence[str]) -> np.ndarray:
        """Captions as uint8 [N, S, S, 3]."""
        out = np.full((len(texts), self.image_size, self.image_size, 3), self.background, np.uint8)
        for image, text in zip(out, texts):
            self._paint(image, text)
        return out

    def render_gray(self, text: str) -> np.ndarray:
        """One caption as a single-channel uint8 [S, S] image."""
        image = np.full((self.image_size, self.image_size, 1), self.background, np.uint8)
        self._paint(image, text)
        return image[:, :, 0]

    def _paint(self, image: np.ndarray, text: str) -> None:
        """Draws the caption into `image` [S, S, C], which holds the background."""
        glyph, word, first = self._glyphs(text)
        if not glyph.size:
            return
        block = self._draw(glyph, *self._layout(glyph, word, first))  # [line, row, x]
        n_lines, f, m, w = block.shape[0], self.font_size, self.margin, self.line_width
        if n_lines * f <= self.image_size - 2 * m:
            region = image[m:m + n_lines * f, m:m + w].reshape(n_lines, f, w, image.shape[2])
        else:  # a single line taller than the image: clipped
            block = block.reshape(n_lines * f, w)[:self.image_size - 2 * m]
            region = image[m:self.image_size - m, m:m + w]
        for channel in range(image.shape[2]):
            region[..., channel] = block

    def _codepoints(self, text: str) -> np.ndarray:
        """Class-table slots of the prepared caption's characters."""
        if self.max_chars is not None:
            text = text[:self.max_chars]
        text = unicodedata.normalize("NFC", text)
        if self.lowercase:
            text = text.lower()
        cps = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), "<u4")
        if cps.size and cps.max() >= NUM_CODEPOINTS:
            cps = np.where(cps >> 12 == 0xE0, _TAG_PLANE, np.minimum(cps, _OTHER_PLANE))
        return cps

    def _glyphs(self, text: str) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """Glyph code points of the drawn characters, the word of each, and each word's first glyph."""
        cps = self._codepoints(text)
        kind = self._kind[cps]
        if cps.size and kind.max() == _IGNORE:
            cps, kind = cps[kind != _IGNORE], kind[kind != _IGNORE]
        drawn = kind == _DRAW
        starts = drawn.copy()
        starts[1:] &= ~drawn[:-1]
        starts = starts[drawn]
        return self._remap[cps[drawn]], np.cumsum(starts) - 1, np.flatnonzero(starts).tolist()

    def _layout(self, glyph: np.ndarray, word: np.ndarray, first: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Line and x of the glyphs that fit after greedy word wrapping (those past the last line are cut)."""
        width = self._width[glyph]
        end = np.cumsum(width + self.spacing) - self.spacing  # ink end of each glyph if all were on one line
        start = end - width
        ends, starts, widths = end.tolist(), start.tolist(), width.tolist()
        shift, word_line = [0] * len(first), [0] * len(first)
        broken: dict[int, tuple[list[int], list[int]]] = {}
        line, line_end, gap, placed = 0, -1, 2 * self.spacing + self.min_glyph_width, glyph.size
        for i, (a, b) in enumerate(zip(first, first[1:] + [glyph.size])):
            w = ends[b - 1] - starts[a]
            x = 0 if line_end < 0 else line_end + gap
            if x + w > self.line_width and line_end >= 0:
                line, x = line + 1, 0
            if line >= self.max_lines:
                placed = a
                break
            shift[i], word_line[i], line_end = x - starts[a], line, x + w
            if w > self.line_width:
                broken[i] = self._break_word(widths[a:b], line)
                line, line_end = broken[i][1][-1], broken[i][0][-1] + widths[b - 1]
        xs = start + np.array(shift)[word]
        lines = np.array(word_line)[word]
        for i, (word_xs, word_lines) in broken.items():
            xs[first[i]:first[i] + len(word_xs)], lines[first[i]:first[i] + len(word_xs)] = word_xs, word_lines
            placed = min(placed, next((first[i] + j for j, row in enumerate(word_lines) if row >= self.max_lines),
                                      placed))
        return lines[:placed], xs[:placed]

    def _break_word(self, widths: list[int], line: int) -> tuple[list[int], list[int]]:
        """Positions (x, line) of the glyphs of a word broken between glyphs, from x = 0 on `line`."""
        xs, lines, x = [], [], 0
        for w in widths:
            if x > 0 and x + w > self.line_width:
                line, x = line + 1, 0
            xs.append(x)
            lines.append(line)
            x += w + self.spacing
        return xs, lines

    def _draw(self, glyph: np.ndarray, lines: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """Pixels [lines, font_size, line_width] of the first len(lines) glyphs at their positions."""
        glyph = glyph[:lines.size].astype(np.intp)
        width = self._width[glyph]
        column_start = np.cumsum(width) - width  # of each glyph in the run of all drawn columns
        column = np.arange(column_start[-1] + width[-1])
        target = column + np.repeat(lines * self.line_width + xs - column_start, width)
        if self._identity_cols:
            source = column + np.repeat(glyph * GLYPH_COLS - column_start, width)
        else:
            within = column - np.repeat(column_start, width)
            scale = np.repeat(self._width16[glyph] / width, width)
            source = ((within + 0.5) * scale).astype(np.intp) + np.repeat(glyph * GLYPH_COLS, width)
        if self._may_overflow:  # a glyph wider than a line: clip it
            fits = target - np.repeat(lines * self.line_width, width) < self.line_width
            target, source = target[fits], source[fits]
        n_lines = int(lines[-1]) + 1
        index = np.full(n_lines * self.line_width, self._pixels.shape[0] - 1, np.intp)
        index[target] = source
        block = self._pixels[index].reshape(n_lines, self.line_width, GLYPH_ROWS)
        if self._rows is not None:
            block = block[:, :, self._rows]
        return block.transpose(0, 2, 1)


@functools.lru_cache(maxsize=16)
def _renderer(image_size: int, options: tuple) -> TextRenderer:
    """A cached renderer for render_to_float."""
    return TextRenderer(image_size, **dict(options))


_TO_FLOAT = (np.arange(256, dtype=np.float32) / np.float32(127.5) - 1).astype(np.float32)


def render_to_float(texts: Sequence[str], image_size: int = 224, **options) -> np.ndarray:
    """Captions as float32 [N, S, S, 3] in [-1, 1] (x / 127.5 - 1), the model's input normalisation."""
    return _TO_FLOAT[_renderer(image_size, tuple(sorted(options.items()))).render_batch(texts)]
