"""Fetching the Tux Paint stamps: the `tuxpaint-stamps-default` .deb unpacked once into <data_dir>/tuxpaint
(`data/debs.py`), keeping only the stamp texts, pictures and options and the copyright file (the 191 MB of spoken
.ogg never touch the disk)."""
from __future__ import annotations

from pathlib import Path

from vlm_jax.data import debs

PACKAGE = "tuxpaint-stamps-default"
STAMPS_DIR = "usr/share/tuxpaint/stamps"
COPYRIGHT = f"usr/share/doc/{PACKAGE}/copyright"
KEEP_SUFFIXES = (".txt", ".png", ".svg", ".dat")


def find_deb(data_dir: str | Path) -> Path | None:
    """The newest-named tuxpaint-stamps-default .deb in <data_dir>/debs, if any."""
    return debs.find_deb(data_dir, PACKAGE)


def _wanted(name: str) -> bool:
    return name == COPYRIGHT or (name.startswith(STAMPS_DIR + "/") and name.endswith(KEEP_SUFFIXES))


def fetch(data_dir: str | Path) -> Path:
    """The extracted stamps root (<data_dir>/tuxpaint/usr/share/tuxpaint/stamps), extracted once (re-extracted
    when the .deb changes). Inside `base.read_only()`: the root as it was extracted, else FileNotFoundError."""
    return debs.fetch(data_dir, PACKAGE, "tuxpaint", _wanted, "The unpacked Tux Paint stamps") / STAMPS_DIR
