"""Dataset "tuxpaint": the Tux Paint stamps (Debian package `tuxpaint-stamps-default`) as an image-caption set.

Each Tux Paint stamp is a picture with a one-sentence English description and its translations. Measured on
tuxpaint-stamps-default 2022.06.04-1 (161 MB .deb; `dpkg-deb -x` gives 230 MB, 191 MB of it spoken .ogg):

* Files under usr/share/tuxpaint/stamps/: 952 `.txt`, 796 `.png`, 248 `.svg`, 528 `.dat`, 7858 `.ogg`, 15 `.wav`.
  Only the .txt/.png/.svg/.dat files (37 MB) and the copyright file are extracted (`dpkg-deb --fsys-tarfile`
  streamed through `tarfile`); the sounds are never written to disk.
* `.txt`: line 1 = the English description (the caption), then one `LANG.utf8=TEXT` line per translation
  (77 language codes such as de, fr, pt_BR, zh_CN, ca@valencia, sr@latin, en_GB). All 952 decode as UTF-8,
  with no BOM, CR, blank, duplicate-language or malformed lines; the parser still drops a BOM, CRs, blank
  lines, lines that are not `LANG.utf8=` and empty translations, and skips (counts) a stamp whose .txt is not
  UTF-8 or whose first line is empty or a translation line. Translations of the 950 kept stamps: de 949,
  ko 945, fr 950, es 949, ja 950, ru 949, it 945, zh_CN 773, en_GB 949 and en_AU 937 (854 / 869 of these
  are the English line verbatim).
* Pictures: 961 picture stems = 713 PNG only + 165 SVG only + 83 both. A stamp is a `.txt` with a same-stem
  picture: 950 (the 2 left, seasonal/christmas/gift and gift2, have only sounds: skipped, "no_picture").
  With both, the PNG is used: it is the same drawing (mean |PNG - SVG| at 64 px: median 2.5 of 255, at most
  12.5, over the 76 without <text>), while the other 7, currency symbols in symbols/money/00_symbols, are SVG
  <text> that needs fonts. So 785 PNG + 165 SVG.
  The other 11 pictures are `_mirror` variants (the picture Tux Paint swaps in when a stamp is mirrored, e.g.
  readable road-sign text); they have no .txt and are not separate stamps: skipped, counted as "variant".
* SVG is rasterised with resvg (`resvg-py`, a self-contained wheel) at 96 dpi (its default dpi 0 makes every
  pt/mm-sized SVG, 38 of 248, fail) and re-rendered with a zoom when the longer side is under 256 px. System
  fonts are not loaded (`skip_system_fonts`), so the result never depends on the machine's fonts: the <text>
  of the 4 SVG-only stamps that have any (stopwatch digits, a serial number, 2 author credits) is not drawn.
* `.dat` files hold Tux Paint options (nomirror 150, noflip 305, colorable 89, tintable 55, scale=…):
  presentation hints, not content, so they are ignored; colorable / tintable stamps keep their drawn colours.
* Images: RGBA (PNG modes RGBA 532, LA 188, P 75, RGB 1) composited on white, cropped to drawn pixels
  (alpha > 0) and squared by `emoji.to_square_rgb`, stored as PNG at 64 px. A picture that does not decode
  or has no drawn pixel is skipped ("picture"; none in 2022.06.04-1). PNG sizes range 39×7 … 694×2348.
* Categories = top-level directories (16): symbols 249, animals 154, town 80, food 74, household 73, seasonal
  71, vehicles 58, clothes 48, plants 40, people 30, space 23, hobbies 17, sports 13, military 11, medical 6,
  naturalforces 3 (950 stamps).
* Captions: 1-31 words (median 3, 90th percentile 9); 278 of the 950 share their caption (as the tokenizer
  reads it: case-folded, `stamps.caption_key`) with another stamp (e.g. 3× "A spider.", "A strawberry.",
  "The letter A." / "The letter a."). Stamps that share a caption are one concept in training (`concept`: the
  smallest id among them; 680 concepts over the 856 train stamps), so a contrastive batch never treats one as
  the other's negative. Test stamps are drawn only among stamps with a caption of their own, so no test caption
  is a training caption and retrieval over the test captions has no ties (the evaluator counts ties against the
  model): round(10%) of each category's stamps, seed 0 → 856 train, 94 test (symbols 25, animals 15, town 8,
  …, naturalforces 0).
* id: index of the stamp among the prepared stamps sorted by path (stable for a package version); `path` is
  the stamp's path under stamps/ without suffix (stable across versions).

The SentencePiece tokenizer is trained at prepare time on the train English captions only (vocab 2048 is a
soft limit; 2022.06.04-1 gives 1180 pieces); other languages become UTF-8 byte pieces (byte_fallback).
Captions are 7 tokens + EOS at the median; 98.6% of the train and all test captions fit text_len 32.
Prepare from scratch: ~1 s `apt-get download`, ~7 s unpacking, ~8 s decoding/rasterising and writing.
GPL-2 data: fetched into the data cache (`<data_dir>/debs`, `<data_dir>/tuxpaint`), never kept in git.

Modules: `fetch` (the .deb), `stamps` (parsing, pictures, split, concepts), `build` (the TFDS dataset and
tokenizer), `dataset` (the "tuxpaint" training stream and evaluation sets).
"""
from vlm_jax.data.tuxpaint.build import (PREPARED_SIZE, SPLITS, TOKENIZER_FILE, VlmTuxpaint, builder,  # noqa: F401
                                         data_source, load_split, prepare, read_split, tokenizer_path, translations)
from vlm_jax.data.tuxpaint.dataset import TuxPaintPairs  # noqa: F401
from vlm_jax.data.tuxpaint.fetch import PACKAGE, fetch, find_deb  # noqa: F401
from vlm_jax.data.tuxpaint.stamps import (Stamp, caption_key, concept_ids, load_rgba, parse_description,  # noqa: F401
                                          render, scan, split_stamps)
