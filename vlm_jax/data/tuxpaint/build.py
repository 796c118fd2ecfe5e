"""The TFDS dataset `vlm_tuxpaint` (train / test stamps as 64 px PNGs with captions, translations, category, path
and id) and its SentencePiece tokenizer: built once by `prepare`, then read by `data_source` / `load_split`."""
from __future__ import annotations

import collections
import dataclasses
import fcntl
import io
import json
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image
from tensorflow_datasets.core import utils as tfds_utils

from vlm_jax.data import base, robust, tokenizer
from vlm_jax.data.tokenizer import Tokenizer
from vlm_jax.data.tuxpaint import fetch as fetching
from vlm_jax.data.tuxpaint import stamps as stamps_lib
from vlm_jax.data.tuxpaint.stamps import Stamp

PREPARED_SIZE = 64
TOKENIZER_FILE = "tokenizer.model"
TOKENIZER_VOCAB = 2048
SPLITS = ("train", "test")


@dataclasses.dataclass(eq=False)
class VlmTuxpaintConfig(tfds.core.BuilderConfig):
    """Stored image size; `native`: the longer side at that size, the stamp's own aspect ratio (NaFlex)."""

    image_size: int = PREPARED_SIZE
    native: bool = False


def png(arr: np.ndarray) -> bytes:
    """uint8 [H, W, 3] → PNG bytes (fast compression: the files are small either way)."""
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


class VlmTuxpaint(tfds.core.GeneratorBasedBuilder):
    """Tux Paint stamps with their descriptions."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [VlmTuxpaintConfig(name="s64", image_size=PREPARED_SIZE),
                       VlmTuxpaintConfig(name="n64", image_size=PREPARED_SIZE, native=True)]

    @tfds_utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        """This file (TFDS's package lookup needs the uninstalled `importlib_resources` backport)."""
        return epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        """Features: image, caption, translations (JSON), category, path, id; metadata: source and counts."""
        s = self.builder_config.image_size
        shape = (None, None, 3) if self.builder_config.native else (s, s, 3)
        features = tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=shape, encoding_format="png"),
            "caption": tfds.features.Text(),
            "translations": tfds.features.Text(),
            "category": tfds.features.Text(),
            "path": tfds.features.Text(),
            "id": tfds.features.Scalar(dtype=np.int64),
        })
        return tfds.core.DatasetInfo(builder=self, description=f"Tux Paint stamps ({fetching.PACKAGE}) with descriptions.",
                                     features=features, metadata=tfds.core.MetadataDict(), disable_shuffling=True)

    def _split_generators(self, dl_manager: Any) -> dict[str, Any]:
        """train / test generators; the source .deb and the skip counts go to the metadata."""
        root = fetching.fetch(self._data_dir_root)
        stamps, skipped = stamps_lib.scan(root)
        kept = []
        for s in stamps:
            render = stamps_lib.render_native if self.builder_config.native else stamps_lib.render
            image = render(s, self.builder_config.image_size)
            if image is None:
                skipped["picture"] += 1
            else:
                kept.append((s, image))
        test = stamps_lib.split_stamps([s for s, _ in kept])
        self.info.metadata.update({
            "deb": fetching.find_deb(self._data_dir_root).name,
            "skipped": dict(sorted(skipped.items())),
            "pictures": dict(collections.Counter(s.picture.suffix[1:] for s, _ in kept)),
        })
        rows = [(i, s, im) for i, (s, im) in enumerate(kept)]
        return {"train": self._generate_examples([r for r in rows if r[1].path not in test]),
                "test": self._generate_examples([r for r in rows if r[1].path in test])}

    def _generate_examples(self, rows: list[tuple[int, Stamp, np.ndarray]]) -> Iterator[tuple[int, dict]]:
        for i, s, image in rows:
            yield i, {"image": png(image), "caption": s.caption, "category": s.category, "path": s.path, "id": i,
                      "translations": json.dumps(s.translations, ensure_ascii=False, sort_keys=True)}


def builder(data_dir: str | Path, image_size: int = PREPARED_SIZE, native: bool = False) -> VlmTuxpaint:
    """Builder instance (prepared or not); `native`: images at their aspect ratio, longer side `image_size`
    (config "n{image_size}")."""
    known = {c.name: c for c in VlmTuxpaint.BUILDER_CONFIGS}
    name = f"{'n' if native else 's'}{image_size}"
    config = known.get(name) or VlmTuxpaintConfig(name=name, image_size=image_size, native=native)
    return VlmTuxpaint(config=config, data_dir=str(data_dir), file_format="array_record")


def tokenizer_path(data_dir: str | Path, image_size: int = PREPARED_SIZE) -> Path:
    """Path of the SentencePiece model written by `prepare`."""
    return Path(builder(data_dir, image_size).data_dir) / TOKENIZER_FILE


def prepare(data_dir: str | Path, image_size: int = PREPARED_SIZE, native: bool = False) -> VlmTuxpaint:
    """Fetch, build the dataset and tokenizer if missing (idempotent, file-locked); print a one-line summary.
    `native`: the native-aspect images (config n{image_size}; no tokenizer of its own: the s64 one reads every
    variant's captions). Inside `base.read_only()` nothing is fetched, built or written: missing data raises
    FileNotFoundError."""
    if base.is_read_only():
        b, fresh = builder(data_dir, image_size, native), False
        how = f"`vlm_jax.data.tuxpaint.prepare({str(data_dir)!r}, {image_size}, native={native})`"
        if not b.is_prepared():
            raise base.not_prepared(f"vlm_tuxpaint/{b.builder_config.name}", data_dir, how)
        if not native and not (Path(b.data_dir) / TOKENIZER_FILE).exists():
            raise base.not_prepared(f"the vlm_tuxpaint/{b.builder_config.name} tokenizer", data_dir, how)
    else:
        b, fresh = _build(data_dir, image_size, native)
    tok = Path(b.data_dir) / TOKENIZER_FILE
    n = {s: b.info.splits[s].num_examples for s in SPLITS}
    meta = dict(b.info.metadata)
    pieces = "" if native else f"; tokenizer {Tokenizer(tok).vocab_size} pieces"
    print(f"vlm_tuxpaint/{b.builder_config.name} {'built' if fresh else 'reused'} at {b.data_dir} from "
          f"{meta.get('deb')}: {n['train'] + n['test']} stamps ({meta.get('pictures')}), {n['train']} train, "
          f"{n['test']} test; skipped {meta.get('skipped')}{pieces}")
    return b


def _build(data_dir: str | Path, image_size: int, native: bool = False) -> tuple[VlmTuxpaint, bool]:
    """The builder once the dataset and tokenizer exist (fetched and built here when missing), and whether it was
    built."""
    Path(data_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(data_dir) / ".vlm_tuxpaint.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        b = builder(data_dir, image_size, native)
        fresh = not b.is_prepared()
        if fresh:
            b.download_and_prepare()
            b = builder(data_dir, image_size, native)
        tok = Path(b.data_dir) / TOKENIZER_FILE
        if not native and not tok.exists():
            captions = [c.decode() for c in read_split(b, "train")["caption"]]
            tokenizer.write_tokenizer(captions, tok, TOKENIZER_VOCAB)
    return b, fresh


def data_source(data_dir: str | Path, split: str, image_size: int = PREPARED_SIZE, encoded_images: bool = False,
                native: bool = False):
    """Random-access source of examples (numpy image, or PNG bytes with `encoded_images`; bytes texts)."""
    b = builder(data_dir, image_size, native)
    if not b.is_prepared():
        raise FileNotFoundError(f"vlm_tuxpaint/{b.builder_config.name} not prepared in {data_dir}; call prepare()")
    decoders = {"image": tfds.decode.SkipDecoding()} if encoded_images else None
    return b.as_data_source(split=split, decoders=decoders)


def read_split(b: VlmTuxpaint, split: str) -> dict[str, np.ndarray]:
    """All examples of a split as stacked numpy arrays, sorted by id (texts as bytes; native-aspect images as a
    list)."""
    src = b.as_data_source(split=split)
    rows = sorted(src.__getitems__(list(range(len(src)))), key=lambda r: int(r["id"]))
    native = b.builder_config.native
    return {k: [r[k] for r in rows] if native and k == "image" else np.stack([r[k] for r in rows]) for k in rows[0]}


def load_split(data_dir: str | Path, split: str, image_size: int = PREPARED_SIZE, native: bool = False
               ) -> dict[str, Any]:
    """Eval arrays sorted by id: image uint8 [N,S,S,3] (`native`: a list of uint8 [h, w, 3]), caption/category/path
    list[str], translations list[dict], id int64 [N]."""
    b = builder(data_dir, image_size, native)
    if not b.is_prepared():
        raise FileNotFoundError(f"vlm_tuxpaint/{b.builder_config.name} not prepared in {data_dir}; call prepare()")
    d = read_split(b, split)
    text = lambda k: [v.decode() for v in d[k]]  # noqa: E731
    images = [np.asarray(im, np.uint8) for im in d["image"]] if native else d["image"].astype(np.uint8)
    return {"image": images, "caption": text("caption"), "category": text("category"),
            "path": text("path"), "translations": [json.loads(t) for t in text("translations")],
            "id": d["id"].astype(np.int64)}


def translations(data: Any) -> dict[str, str]:
    """{lang: text} from a stored example's translations JSON ({} when missing or malformed)."""
    text = robust.decode_caption(data)
    try:
        out = json.loads(text) if text else {}
    except ValueError:
        return {}
    return out if isinstance(out, dict) else {}
