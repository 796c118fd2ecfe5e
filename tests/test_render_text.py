"""Unifont text renderer: pixels against glyphs decoded by hand from unifont.hex, wrapping, fallbacks, sizes."""
from __future__ import annotations

import functools
import gzip
from pathlib import Path

import numpy as np
import pytest

from vlm_jax.data import render_text
from vlm_jax.data.render_text import TextRenderer, render_to_float

FONT = Path("/usr/share/unifont/unifont.hex")
GREY, BLACK, MARGIN = 127, 0, 1
SPACE, SPACING = 4, 1  # documented defaults at font size 16: a space is 4 px wide, glyphs are 1 px apart


@functools.lru_cache(maxsize=None)
def _hex_line(char: str) -> str:
    """The raw `CODE:HEX` line of `char` in unifont.hex, found with plain string operations."""
    prefix = f"{ord(char):04X}:"
    for line in FONT.read_text().splitlines():
        if line.startswith(prefix):
            return line
    raise KeyError(char)


def _hand_bitmap(char: str) -> np.ndarray:
    """16-row bitmap of `char` decoded bit by bit from its hex line, trimmed to its inked columns."""
    digits = _hex_line(char).split(":")[1]
    per_row = len(digits) // 16  # 2 hex digits (8 px) or 4 (16 px) per row
    rows = [bin(int(digits[r * per_row:(r + 1) * per_row], 16))[2:].zfill(per_row * 4) for r in range(16)]
    bitmap = np.array([[bit == "1" for bit in row] for row in rows])
    inked = [c for c in range(bitmap.shape[1]) if bitmap[:, c].any()]
    return bitmap[:, inked[0]:inked[-1] + 1]


def _expected(bitmap: np.ndarray, size: int, x: int = MARGIN, y: int = MARGIN) -> np.ndarray:
    """A grey RGB image with `bitmap` in black at (x, y)."""
    image = np.full((size, size), GREY, np.uint8)
    h, w = bitmap.shape
    image[y:y + h, x:x + w][bitmap] = BLACK
    return np.repeat(image[:, :, None], 3, axis=2)


def _hand_layout(text: str, size: int) -> np.ndarray:
    """`text` rendered per the module docstring's rules, built independently of the renderer: default options
    (16-px font, lowercase, margin 1), glyphs hand-decoded from unifont.hex, words greedily wrapped, a word
    wider than a line broken between glyphs, lines that do not fit dropped. Plain words only (no controls,
    invisible or missing characters)."""
    line_width, max_lines = size - 2 * MARGIN, (size - 2 * MARGIN) // 16
    image = np.full((size, size), GREY, np.uint8)
    line, end = 0, None  # end: where the ink of the current line ends (None: line still empty)
    for word in text.lower().split():
        glyphs = [_hand_bitmap(c) for c in word]
        width = sum(g.shape[1] for g in glyphs) + SPACING * (len(glyphs) - 1)
        x = 0 if end is None else end + SPACING + SPACE + SPACING
        if end is not None and x + width > line_width:
            line, x = line + 1, 0
        for g in glyphs:
            if x > 0 and x + g.shape[1] > line_width:  # only in a word wider than a line
                line, x = line + 1, 0
            if line < max_lines:
                image[MARGIN + 16 * line:MARGIN + 16 * (line + 1), MARGIN + x:MARGIN + x + g.shape[1]][g] = BLACK
            x += g.shape[1] + SPACING
        end = x - SPACING
    return np.repeat(image[:, :, None], 3, axis=2)


@pytest.fixture(scope="module")
def renderer() -> TextRenderer:
    return TextRenderer(image_size=64)


@pytest.mark.parametrize("text,char", [("a", "a"), ("A", "a"), ("한", "한"), ("中", "中"), ("Ж", "ж")])
def test_glyph_pixels_match_hand_decoded_font(renderer, text, char):
    image = renderer.render(text)
    assert image.dtype == np.uint8 and image.shape == (64, 64, 3)
    np.testing.assert_array_equal(image, _expected(_hand_bitmap(char), 64))


def test_wide_glyphs_are_wide():
    assert _hand_bitmap("中").shape[1] > 8 and _hand_bitmap("한").shape[1] > 8  # 16-px font entries


def test_lowercase_off_keeps_capitals():
    image = TextRenderer(image_size=64, lowercase=False).render("A")
    np.testing.assert_array_equal(image, _expected(_hand_bitmap("A"), 64))
    assert not np.array_equal(image, TextRenderer(image_size=64).render("A"))


def test_glyph_spacing_and_space_width(renderer):
    a, b = _hand_bitmap("a"), _hand_bitmap("b")
    both = _expected(a, 64)
    both[MARGIN:MARGIN + 16, MARGIN + a.shape[1] + 1:MARGIN + a.shape[1] + 1 + b.shape[1]][b] = BLACK
    np.testing.assert_array_equal(renderer.render("ab"), both)
    spaced = _expected(a, 64)
    x = MARGIN + a.shape[1] + 1 + 4 + 1  # spacing, a 4-px space, spacing
    spaced[MARGIN:MARGIN + 16, x:x + b.shape[1]][b] = BLACK
    np.testing.assert_array_equal(renderer.render("a  \t b"), spaced)  # whitespace runs are one space


def test_word_wraps_whole_onto_next_line(renderer):
    hello, world, both = renderer.render("hello"), renderer.render("world"), renderer.render("hello world")
    assert (hello[MARGIN:MARGIN + 16] == BLACK).any() and (both[MARGIN + 16:MARGIN + 32] == BLACK).any()
    np.testing.assert_array_equal(both[:MARGIN + 16], hello[:MARGIN + 16])
    np.testing.assert_array_equal(both[MARGIN + 16:MARGIN + 32], world[MARGIN:MARGIN + 16])
    assert (both[MARGIN + 32:] == GREY).all()


def test_long_word_is_broken_across_lines(renderer):
    image = renderer.render("m" * 12)
    m = _hand_bitmap("m").shape[1]
    per_line = (62 + 1) // (m + 1)
    assert per_line < 12
    np.testing.assert_array_equal(image[:MARGIN + 16], renderer.render("m" * per_line)[:MARGIN + 16])
    rest = renderer.render("m" * (12 - per_line))
    np.testing.assert_array_equal(image[MARGIN + 16:MARGIN + 32], rest[MARGIN:MARGIN + 16])


def test_overlong_caption_is_truncated_and_max_chars_cuts_first():
    words = " ".join(f"word{i}" for i in range(500))
    full = TextRenderer().render(words)
    lines = (224 - 2 * MARGIN) // 16
    assert (full[MARGIN + (lines - 1) * 16:MARGIN + lines * 16] == BLACK).any()
    assert (full[MARGIN + lines * 16:] == GREY).all()
    short = TextRenderer(max_chars=20).render(words)
    assert (short == BLACK).sum() < (full == BLACK).sum()
    np.testing.assert_array_equal(short, TextRenderer().render(words[:20]))


@pytest.mark.parametrize("char", ["\U0001F600", "\x00", "\u0378", "\ue000", "\ud800", "\uffff"])
def test_unknown_characters_draw_the_replacement_glyph(renderer, char):
    np.testing.assert_array_equal(renderer.render(char), _expected(_hand_bitmap("\ufffd"), 64))


def test_empty_and_invisible_captions_are_blank(renderer):
    for text in ["", "   \n\t", "\u200d", "\ufe0f"]:
        assert (renderer.render(text) == GREY).all()
    np.testing.assert_array_equal(renderer.render("a\u00ad\u200db"), renderer.render("ab"))


def test_nfc_composes_combining_accents(renderer):
    np.testing.assert_array_equal(renderer.render("e\u0301"), renderer.render("\u00e9"))


def test_font_size_32_doubles_the_16px_glyphs():
    for char in ["a", "中", "한"]:
        small, big = _hand_bitmap(char), TextRenderer(image_size=64, font_size=32).render(char)
        np.testing.assert_array_equal(big, _expected(small.repeat(2, 0).repeat(2, 1), 64))


@pytest.mark.parametrize("size", [32, 64, 224])
def test_image_sizes(size):
    texts = ["a dog on a skateboard", "한국어 캡션 中文 Привет مرحبا", ""]
    images = TextRenderer(image_size=size).render_batch(texts)
    assert images.shape == (3, size, size, 3) and images.dtype == np.uint8
    assert (images[:2] == BLACK).any(axis=(1, 2, 3)).all() and (images[2] == GREY).all()
    assert set(np.unique(images)) == {BLACK, GREY}
    for image, text in zip(images, texts):  # wrapped (64, 224) or cut to the one line that fits (32)
        np.testing.assert_array_equal(image, _hand_layout(text, size), err_msg=text)
    np.testing.assert_array_equal(images[1], TextRenderer(image_size=size).render(texts[1]))


def test_tiny_images_and_small_fonts_clip_without_error():
    tiny = TextRenderer(image_size=8).render("中中 中")  # one 16-px line clipped to 6 px, glyphs to the width
    assert (tiny[1:7, 1:7] == BLACK).any() and (tiny[[0, 7]] == GREY).all() and (tiny[:, [0, 7]] == GREY).all()
    small = TextRenderer(image_size=32, font_size=8).render("a dog on a skateboard")
    assert (small == BLACK).any() and (small[MARGIN + 3 * 8:] == GREY).all()  # 3 lines of 8 px fit


def test_render_to_float():
    texts = ["a cat", "고양이"]
    ink = np.stack([_hand_layout(t, 32) == BLACK for t in texts])
    assert ink.any(axis=(1, 2, 3)).all() and not ink.all(axis=(1, 2, 3)).any()
    x = render_to_float(texts, image_size=32)
    assert x.dtype == np.float32 and x.shape == (2, 32, 32, 3)
    assert (x[ink] == -1).all()  # ink 0 → exactly -1
    np.testing.assert_allclose(x[~ink], 127 / 127.5 - 1, rtol=0, atol=1e-7)  # background 127 → x / 127.5 - 1
    y = render_to_float(texts, image_size=32, ink=255, background=0)  # options reach the renderer
    assert (y[ink] == 1).all() and (y[~ink] == -1).all()
    z = render_to_float(texts, image_size=32, ink=51, background=204)
    np.testing.assert_allclose(z, np.where(ink, 51 / 127.5 - 1, 204 / 127.5 - 1), rtol=0, atol=1e-7)


def test_gz_font_and_missing_glyphs(tmp_path):
    lines = [_hex_line(c) for c in "a\ufffd"]
    path = tmp_path / "tiny.hex.gz"
    with gzip.open(path, "wt") as f:
        f.write("\n".join(lines) + "\n")
    tiny = TextRenderer(image_size=32, font_path=path)
    np.testing.assert_array_equal(tiny.render("a"), _expected(_hand_bitmap("a"), 32))
    np.testing.assert_array_equal(tiny.render("b"), _expected(_hand_bitmap("\ufffd"), 32))
    no_fffd = tmp_path / "no_fffd.hex"
    no_fffd.write_text(lines[0] + "\n")
    assert (TextRenderer(image_size=32, font_path=no_fffd).render("b") == BLACK).any()  # a drawn box
    assert render_text.find_font(no_fffd) == no_fffd
