"""TFDS array_record dataset "vlm_emoji": Noto (train) and OpenMoji (eval) renders of the emoji concepts.

Splits: "train" = Noto renders of seen concepts; "noto" / "openmoji" = all concepts in that style;
"twitter" / "facebook" = the concepts those npm image sets draw (extra training styles, see emoji_sets).
The seen/unseen split (seed 0, 10% unseen, stratified by flag) and a SentencePiece tokenizer trained on
the train captions are made at prepare time; the tokenizer file lives next to the dataset files.
Works without TensorFlow: images are yielded as PNG bytes and read back with `as_data_source()`.
"""
from __future__ import annotations

import dataclasses
import fcntl
import functools
import io
from pathlib import Path
from typing import Any

import os

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image
from tensorflow_datasets.core import utils as tfds_utils

from vlm_jax.data import base, emoji, emoji_sets, tokenizer

UNSEEN_FRACTION = 0.1
SPLIT_SEED = 0
TOKENIZER_FILE = "tokenizer.model"
TOKENIZER_VOCAB = 1024
EXTRA_STYLES: tuple[str, ...] = tuple(emoji_sets.NPM_SETS)
SPLITS: tuple[str, ...] = ("train", "noto", "openmoji") + EXTRA_STYLES


def npm_cache(data_dir: str | Path) -> Path:
    """Where npm tarballs are kept: $VLM_JAX_NPM_CACHE or <data_dir>/npm."""
    return Path(os.environ.get("VLM_JAX_NPM_CACHE") or Path(data_dir) / "npm")


@dataclasses.dataclass(eq=False)
class VlmEmojiConfig(tfds.core.BuilderConfig):
    """Image size and an optional cap on the number of concepts (for fast tests)."""

    image_size: int = 64
    max_concepts: int | None = None


def config_for(image_size: int = 64, max_concepts: int | None = None) -> VlmEmojiConfig:
    """Config named e.g. 's64' or 's64_n200'."""
    if image_size == 64 and max_concepts is None:
        return VlmEmoji.BUILDER_CONFIGS[0]
    name = f"s{image_size}" + (f"_n{max_concepts}" if max_concepts else "")
    return VlmEmojiConfig(name=name, image_size=image_size, max_concepts=max_concepts)


def subset_concepts(concepts: list[emoji.Concept], max_concepts: int | None) -> list[emoji.Concept]:
    """Evenly spaced subset (keeps flags and non-flags, keeps ids)."""
    if not max_concepts or max_concepts >= len(concepts):
        return list(concepts)
    idx = np.linspace(0, len(concepts) - 1, max_concepts).round().astype(int)
    return [concepts[i] for i in np.unique(idx)]


def _png(arr: np.ndarray) -> bytes:
    """Lossless PNG bytes of a uint8 image."""
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


class VlmEmoji(tfds.core.GeneratorBasedBuilder):
    """Emoji image/name pairs in two styles."""

    VERSION = tfds.core.Version("1.2.0")
    RELEASE_NOTES = {"1.0.0": "Initial release.", "1.1.0": "Renders cropped to their drawn pixels.",
                     "1.2.0": "Twitter and Facebook styles from npm image sets."}
    BUILDER_CONFIGS = [VlmEmojiConfig(name="s64", image_size=64)]

    @tfds_utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        """This file (TFDS's package lookup needs the uninstalled `importlib_resources` backport)."""
        return epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        """Features: image, name, emoji, concept, is_flag, seen."""
        s = self.builder_config.image_size
        features = tfds.features.FeaturesDict(
            {
                "image": tfds.features.Image(shape=(s, s, 3), encoding_format="png"),
                "name": tfds.features.Text(),
                "emoji": tfds.features.Text(),
                "concept": tfds.features.Scalar(dtype=np.int64),
                "is_flag": tfds.features.Scalar(dtype=np.bool_),
                "seen": tfds.features.Scalar(dtype=np.bool_),
            }
        )
        return tfds.core.DatasetInfo(
            builder=self,
            description="Emoji renders (Noto Color Emoji, OpenMoji) with CLDR names.",
            features=features,
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager: Any) -> dict[str, Any]:
        """train / noto / openmoji generators."""
        cfg = self.builder_config
        concepts = subset_concepts(emoji.select_concepts(cfg.image_size), cfg.max_concepts)
        unseen = emoji.split_concepts(concepts, UNSEEN_FRACTION, SPLIT_SEED)
        seen = [c for c in concepts if c.id not in unseen]
        splits = {
            "train": self._generate_examples(seen, "noto", unseen),
            "noto": self._generate_examples(concepts, "noto", unseen),
            "openmoji": self._generate_examples(concepts, "openmoji", unseen),
        }
        cache = npm_cache(self._data_dir_root)
        for style in EXTRA_STYLES:
            images = emoji_sets.load_images(style, [c.emoji for c in concepts], cfg.image_size, cache)
            splits[style] = self._generate_examples(concepts, style, unseen, images)
        return splits

    def _generate_examples(self, concepts: list[emoji.Concept], style: str, unseen: set[int],
                           images: dict[str, np.ndarray] | None = None):
        """One example per concept (that the style draws), keyed by concept id."""
        size = self.builder_config.image_size
        for c in concepts:
            if images is not None and c.emoji not in images:
                continue
            image = images[c.emoji] if images is not None else emoji.render(c.emoji, style, size)
            yield c.id, {
                "image": _png(image),
                "name": c.name,
                "emoji": c.emoji,
                "concept": c.id,
                "is_flag": c.is_flag,
                "seen": c.id not in unseen,
            }


def builder(data_dir: str | Path, image_size: int = 64, max_concepts: int | None = None) -> VlmEmoji:
    """Builder instance (prepared or not) for a data_dir and config."""
    return VlmEmoji(
        config=config_for(image_size, max_concepts), data_dir=str(data_dir), file_format="array_record"
    )


def tokenizer_path(data_dir: str | Path, image_size: int = 64, max_concepts: int | None = None) -> Path:
    """Path of the SentencePiece model written by `prepare`."""
    return Path(builder(data_dir, image_size, max_concepts).data_dir) / TOKENIZER_FILE


def prepare(data_dir: str | Path, image_size: int = 64, max_concepts: int | None = None) -> VlmEmoji:
    """Build the dataset and tokenizer if missing (idempotent, file-locked) and print a one-line summary. Inside
    `base.read_only()` nothing is built or written: missing data raises FileNotFoundError."""
    if base.is_read_only():
        b, fresh = builder(data_dir, image_size, max_concepts), False
        how = f"`vlm_jax.data.emoji_tfds.prepare({str(data_dir)!r}, {image_size}, {max_concepts})`"
        if not b.is_prepared():
            raise base.not_prepared(f"vlm_emoji/{b.builder_config.name}", data_dir, how)
        if not (Path(b.data_dir) / TOKENIZER_FILE).exists():
            raise base.not_prepared(f"the vlm_emoji/{b.builder_config.name} tokenizer", data_dir, how)
    else:
        b, fresh = _build(data_dir, image_size, max_concepts)
    n = {s: b.info.splits[s].num_examples for s in SPLITS}
    meta = read_split(b, "noto", images=False)
    print(
        f"vlm_emoji/{b.builder_config.name} {'built' if fresh else 'reused'} at {b.data_dir}: "
        f"{n['noto']} concepts, {n['train']} seen, {n['noto'] - n['train']} unseen, "
        f"{int(meta['is_flag'].sum())} flags ({int((meta['is_flag'] & ~meta['seen']).sum())} unseen)"
    )
    return b


def _build(data_dir: str | Path, image_size: int, max_concepts: int | None) -> tuple[VlmEmoji, bool]:
    """The builder once the dataset and tokenizer exist (built here when missing), and whether it was built."""
    Path(data_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(data_dir) / ".vlm_emoji.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent processes on one host build once
        b = builder(data_dir, image_size, max_concepts)
        fresh = not b.is_prepared()
        if fresh:
            b.download_and_prepare()
            emoji._render_cached.cache_clear()
            b = builder(data_dir, image_size, max_concepts)
        tok = Path(b.data_dir) / TOKENIZER_FILE
        if not tok.exists():
            names = [n.decode() for n in read_split(b, "train", images=False)["name"]]
            tokenizer.write_tokenizer(tokenizer.captions(names), tok, TOKENIZER_VOCAB)
    return b, fresh


def data_source(data_dir: str | Path, split: str, image_size: int = 64, max_concepts: int | None = None,
                encoded_images: bool = False):
    """Random-access source of examples (numpy image, or PNG bytes with `encoded_images`; bytes text)."""
    b = builder(data_dir, image_size, max_concepts)
    if not b.is_prepared():
        raise FileNotFoundError(f"vlm_emoji/{b.builder_config.name} not prepared in {data_dir}; call prepare()")
    decoders = {"image": tfds.decode.SkipDecoding()} if encoded_images else None
    return b.as_data_source(split=split, decoders=decoders)


def read_split(b: VlmEmoji, split: str, images: bool = True) -> dict[str, np.ndarray]:
    """All examples of a split as stacked numpy arrays, sorted by concept id (texts as bytes); without `images`,
    the other fields only (no PNG decoding)."""
    src = b.as_data_source(split=split, decoders=None if images else {"image": tfds.decode.SkipDecoding()})
    rows = sorted(src.__getitems__(list(range(len(src)))), key=lambda r: int(r["concept"]))
    return {k: np.stack([r[k] for r in rows]) for k in rows[0] if images or k != "image"}


def load_split(
    data_dir: str | Path, split: str, image_size: int = 64, max_concepts: int | None = None
) -> dict[str, Any]:
    """Eval arrays: image uint8 [N,S,S,3], name list[str], emoji list[str], concept int64, is_flag/seen bool.
    Decoded once per process and prepared dataset (the arrays are read-only; each call gets its own lists)."""
    b = builder(data_dir, image_size, max_concepts)
    if not b.is_prepared():
        raise FileNotFoundError(f"vlm_emoji/{b.builder_config.name} not prepared in {data_dir}; call prepare()")
    info = Path(b.data_dir) / "dataset_info.json"
    stamp = info.stat().st_mtime_ns if info.exists() else 0
    d = _decoded_split(str(data_dir), stamp, split, image_size, max_concepts)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


@functools.lru_cache(maxsize=8)
def _decoded_split(data_dir: str, stamp: int, split: str, image_size: int,
                   max_concepts: int | None) -> dict[str, Any]:
    """`load_split`'s arrays for one prepared dataset (a rebuilt one has another `stamp`)."""
    d = read_split(builder(data_dir, image_size, max_concepts), split)
    out = {"image": d["image"].astype(np.uint8), "name": tuple(n.decode() for n in d["name"]),
           "emoji": tuple(e.decode() for e in d["emoji"]), "concept": d["concept"].astype(np.int64),
           "is_flag": d["is_flag"].astype(bool), "seen": d["seen"].astype(bool)}
    for v in out.values():
        if isinstance(v, np.ndarray):
            v.flags.writeable = False
    return out
