"""Extra emoji styles from npm image sets (Twitter/Twemoji and Facebook artwork, 64 px PNGs) for training.

The packages come from the npm registry with `npm pack` (no install, no node code run) into
`<data_dir>/npm/`. Only the PNGs of the concepts asked for are read from the tarball. Licences:
emoji-datasource is MIT; Twemoji graphics CC BY 4.0; Facebook graphics are Facebook's (research use).
"""
from __future__ import annotations

import fcntl
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from vlm_jax.data.emoji import to_square_rgb

NPM_SETS = {"twitter": ("emoji-datasource-twitter", "16.0.0"),
            "facebook": ("emoji-datasource-facebook", "16.0.0")}


def fetch(style: str, cache_dir: str | Path) -> Path:
    """Path of the package tarball for `style`, fetched with `npm pack` when missing."""
    if style not in NPM_SETS:
        raise ValueError(f"Unknown npm emoji set {style!r}; valid: {sorted(NPM_SETS)}")
    name, version = NPM_SETS[style]
    cache = Path(cache_dir)
    tgz = cache / f"{name}-{version}.tgz"
    if tgz.exists():
        return tgz
    npm = shutil.which("npm")
    if npm is None:
        raise FileNotFoundError(f"npm is needed to fetch {name}@{version} (apt-get install npm), "
                                "or drop the style from data.train_styles")
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".npm.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # processes sharing the cache (parallel test workers) fetch once
        if not tgz.exists():
            with tempfile.TemporaryDirectory(dir=cache) as tmp:  # a reader never sees a half-written tarball
                subprocess.run([npm, "pack", f"{name}@{version}", "--silent"], cwd=tmp, check=True,
                               stdout=subprocess.DEVNULL)
                os.replace(Path(tmp) / tgz.name, tgz)
    return tgz


def _codepoints(e: str) -> str:
    """'1F1EB-1F1F7' style key of an emoji string."""
    return "-".join(f"{ord(c):04X}" for c in e)


def _stream(tgz: Path, wanted: set[str]) -> dict[str, bytes]:
    """Reads the named members in one sequential pass over the gzip stream."""
    out = {}
    with tarfile.open(tgz, "r|gz") as tar:
        for member in tar:
            if member.name in wanted:
                out[member.name] = tar.extractfile(member).read()
    return out


def load_images(style: str, emojis: list[str], size: int, cache_dir: str | Path) -> dict[str, np.ndarray]:
    """uint8 [size, size, 3] renders (cropped like the font renders) of the emojis the set has."""
    tgz = fetch(style, cache_dir)
    meta = json.loads(_stream(tgz, {"package/emoji.json"})["package/emoji.json"])
    files: dict[str, str] = {}
    for row in meta:
        if row.get(f"has_img_{style}"):
            for key in (row["unified"], row.get("non_qualified")):
                if key:
                    files.setdefault(key.upper(), row["image"])
    chosen = {}
    for e in emojis:
        image = files.get(_codepoints(e)) or files.get(_codepoints(e.replace("\ufe0f", "")))
        if image is not None:
            chosen[e] = f"package/img/{style}/64/{image}"
    blobs = _stream(tgz, set(chosen.values()))
    return {e: to_square_rgb(Image.open(io.BytesIO(blobs[path])).convert("RGBA"), size)
            for e, path in chosen.items() if path in blobs}
