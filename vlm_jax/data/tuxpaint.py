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
* Captions: 1-31 words (median 3, 90th percentile 9); 278 of the 950 share their (case-folded) English
  caption with another stamp (e.g. 3× "A spider.", "A strawberry."). Test stamps are therefore drawn only
  among stamps with a caption of their own, so no test caption is a training caption and retrieval over the
  test captions has no ties (the evaluator counts ties against the model): round(10%) of each category's
  stamps, seed 0 → 856 train, 94 test (symbols 25, animals 15, town 8, …, naturalforces 0).
* id: index of the stamp among the prepared stamps sorted by path (stable for a package version); `path` is
  the stamp's path under stamps/ without suffix (stable across versions).

The SentencePiece tokenizer is trained at prepare time on the train English captions only (vocab 2048 is a
soft limit; 2022.06.04-1 gives 1180 pieces); other languages become UTF-8 byte pieces (byte_fallback).
Captions are 7 tokens + EOS at the median; 98.6% of the train and all test captions fit text_len 32.
Prepare from scratch: ~1 s `apt-get download`, ~7 s unpacking, ~8 s decoding/rasterising and writing.
GPL-2 data: fetched into the data cache (`<data_dir>/debs`, `<data_dir>/tuxpaint`), never kept in git.
"""
from __future__ import annotations

import collections
import dataclasses
import fcntl
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any, Iterator, Sequence

import grain
import ml_collections
import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image
from tensorflow_datasets.core import utils as tfds_utils

from vlm_jax.config import check_keys
from vlm_jax.data import augment, emoji, pipeline, robust, tokenizer
from vlm_jax.data.image_text import PIXEL_BASELINE_SIZE, TokenizerText, _prep_images, default_data_dir, register
from vlm_jax.data.tokenizer import Tokenizer
from vlm_jax.evals.zeroshot import EvalSet, ZeroShotEvaluator

PACKAGE = "tuxpaint-stamps-default"
STAMPS_DIR = "usr/share/tuxpaint/stamps"
COPYRIGHT = f"usr/share/doc/{PACKAGE}/copyright"
KEEP_SUFFIXES = (".txt", ".png", ".svg", ".dat")
VARIANT_SUFFIXES = ("_mirror", "_flip")
TEST_FRACTION = 0.1
SPLIT_SEED = 0
PREPARED_SIZE = 64
TOKENIZER_FILE = "tokenizer.model"
TOKENIZER_VOCAB = 2048
SVG_DPI = 96.0
SVG_MIN_SIDE = 256  # SVGs whose longer side is smaller are rasterised with a zoom
SPLITS = ("train", "test")
MARKER = ".extracted_from"  # in <data_dir>/tuxpaint: the name of the .deb it was unpacked from
_LANG_LINE = re.compile(r"^([A-Za-z]{2,3}(?:_[A-Za-z]{2,3})?(?:@[A-Za-z]+)?)\.utf8=(.*)$")


# ----------------------------------------------------------------------------------------------- fetching

def _debs_dir(data_dir: str | Path) -> Path:
    return Path(data_dir) / "debs"


def find_deb(data_dir: str | Path) -> Path | None:
    """The newest-named tuxpaint-stamps-default .deb in <data_dir>/debs, if any."""
    debs = sorted(_debs_dir(data_dir).glob(f"{PACKAGE}_*.deb"))
    return debs[-1] if debs else None


def _download(data_dir: str | Path) -> Path:
    """`apt-get download` into <data_dir>/debs; a clear error naming the commands when it cannot."""
    debs = _debs_dir(data_dir)
    debs.mkdir(parents=True, exist_ok=True)
    try:
        r = subprocess.run(["apt-get", "download", PACKAGE], cwd=debs, capture_output=True, text=True)
        why = (r.stderr or r.stdout).strip().splitlines()[-1:] if r.returncode else []
    except FileNotFoundError:
        why = ["apt-get not found"]
    deb = find_deb(data_dir)
    if deb is None:
        raise FileNotFoundError(
            f"No {PACKAGE} .deb in {debs} and `apt-get download {PACKAGE}` failed ({' '.join(why) or 'no file'}). "
            f"Run `bash scripts/setup.sh`, or `cd {debs} && apt-get download {PACKAGE}` (after "
            f"`sudo apt-get update` when apt has no package lists), or copy the .deb there.")
    return deb


def _wanted(name: str) -> bool:
    name = name[2:] if name.startswith("./") else name
    return name == COPYRIGHT or (name.startswith(STAMPS_DIR + "/") and name.endswith(KEEP_SUFFIXES))


def _extract(deb: Path, out: Path) -> None:
    """The stamp texts/pictures/options and the copyright of `deb` into `out`, atomically, with a marker file."""
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"dpkg-deb not found (needed to unpack {deb}): `apt-get install dpkg`") from e
    failure = None
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            tar.extractall(tmp, members=(m for m in tar if (m.isfile() or m.isdir()) and _wanted(m.name)),
                           filter="data")
    except (tarfile.TarError, OSError) as e:
        failure = e
    finally:
        proc.stdout.close()
        err = proc.stderr.read().decode(errors="replace").strip()
        proc.wait()
    if proc.returncode or failure is not None:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeError(f"Unpacking {deb} failed (`dpkg-deb --fsys-tarfile` exit {proc.returncode}: "
                           f"{err or failure}); delete it and run `bash scripts/setup.sh` to download it again")
    (tmp / MARKER).write_text(deb.name + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.replace(out)


def fetch(data_dir: str | Path) -> Path:
    """The extracted stamps root (<data_dir>/tuxpaint/usr/share/tuxpaint/stamps): uses a .deb in <data_dir>/debs
    or `apt-get download`s one, and extracts it once (file-locked; re-extracted when the .deb changes)."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    out = data_dir / "tuxpaint"
    with open(data_dir / ".vlm_tuxpaint_fetch.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        deb = find_deb(data_dir) or _download(data_dir)
        marker = out / MARKER
        if not (marker.exists() and marker.read_text().strip() == deb.name):
            _extract(deb, out)
    return out / STAMPS_DIR


# ------------------------------------------------------------------------------------------------ parsing

@dataclasses.dataclass(frozen=True)
class Stamp:
    """One stamp: its path under stamps/ without suffix, picture file, caption, translations and category."""

    path: str
    picture: Path
    caption: str
    translations: dict[str, str]
    category: str


def parse_description(text: str) -> tuple[str | None, dict[str, str]]:
    """A stamp .txt → (English caption or None, {lang: translation}); see the module docstring."""
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


def split_stamps(stamps: list[Stamp], test_fraction: float = TEST_FRACTION, seed: int = SPLIT_SEED) -> set[str]:
    """Paths of the held-out stamps: round(test_fraction * n) of each category's n stamps, drawn (seed) among
    the stamps whose case-folded caption no other stamp has, so test captions are distinct and never train
    captions (retrieval over the test captions has no ties). Deterministic given the stamps and the seed."""
    counts = collections.Counter(s.caption.casefold() for s in stamps)
    rng = np.random.default_rng(seed)
    test: set[str] = set()
    for category in sorted({s.category for s in stamps}):
        members = sorted((s for s in stamps if s.category == category), key=lambda s: s.path)
        unique = [s.path for s in members if counts[s.caption.casefold()] == 1]
        n = min(int(round(test_fraction * len(members))), len(unique))
        if n:
            test.update(str(p) for p in rng.choice(unique, size=n, replace=False))
    return test


# ------------------------------------------------------------------------------------------ TFDS dataset

@dataclasses.dataclass(eq=False)
class VlmTuxpaintConfig(tfds.core.BuilderConfig):
    """Stored image size."""

    image_size: int = PREPARED_SIZE


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


class VlmTuxpaint(tfds.core.GeneratorBasedBuilder):
    """Tux Paint stamps with their descriptions."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [VlmTuxpaintConfig(name="s64", image_size=PREPARED_SIZE)]

    @tfds_utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        """This file (TFDS's package lookup needs the uninstalled `importlib_resources` backport)."""
        return epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        """Features: image, caption, translations (JSON), category, path, id; metadata: source and counts."""
        s = self.builder_config.image_size
        features = tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(s, s, 3), encoding_format="png"),
            "caption": tfds.features.Text(),
            "translations": tfds.features.Text(),
            "category": tfds.features.Text(),
            "path": tfds.features.Text(),
            "id": tfds.features.Scalar(dtype=np.int64),
        })
        return tfds.core.DatasetInfo(builder=self, description=f"Tux Paint stamps ({PACKAGE}) with descriptions.",
                                     features=features, metadata=tfds.core.MetadataDict(), disable_shuffling=True)

    def _split_generators(self, dl_manager: Any) -> dict[str, Any]:
        """train / test generators; the source .deb and the skip counts go to the metadata."""
        root = fetch(self._data_dir_root)
        stamps, skipped = scan(root)
        kept = []
        for s in stamps:
            image = render(s, self.builder_config.image_size)
            if image is None:
                skipped["picture"] += 1
            else:
                kept.append((s, image))
        test = split_stamps([s for s, _ in kept])
        self.info.metadata.update({
            "deb": find_deb(self._data_dir_root).name,
            "skipped": dict(sorted(skipped.items())),
            "pictures": dict(collections.Counter(s.picture.suffix[1:] for s, _ in kept)),
        })
        rows = [(i, s, im) for i, (s, im) in enumerate(kept)]
        return {"train": self._generate_examples([r for r in rows if r[1].path not in test]),
                "test": self._generate_examples([r for r in rows if r[1].path in test])}

    def _generate_examples(self, rows: list[tuple[int, Stamp, np.ndarray]]) -> Iterator[tuple[int, dict]]:
        for i, s, image in rows:
            yield i, {"image": _png(image), "caption": s.caption, "category": s.category, "path": s.path, "id": i,
                      "translations": json.dumps(s.translations, ensure_ascii=False, sort_keys=True)}


def builder(data_dir: str | Path, image_size: int = PREPARED_SIZE) -> VlmTuxpaint:
    """Builder instance (prepared or not)."""
    config = VlmTuxpaint.BUILDER_CONFIGS[0] if image_size == PREPARED_SIZE else \
        VlmTuxpaintConfig(name=f"s{image_size}", image_size=image_size)
    return VlmTuxpaint(config=config, data_dir=str(data_dir), file_format="array_record")


def tokenizer_path(data_dir: str | Path, image_size: int = PREPARED_SIZE) -> Path:
    """Path of the SentencePiece model written by `prepare`."""
    return Path(builder(data_dir, image_size).data_dir) / TOKENIZER_FILE


def prepare(data_dir: str | Path, image_size: int = PREPARED_SIZE) -> VlmTuxpaint:
    """Fetch, build the dataset and tokenizer if missing (idempotent, file-locked); print a one-line summary."""
    Path(data_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(data_dir) / ".vlm_tuxpaint.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        b = builder(data_dir, image_size)
        fresh = not b.is_prepared()
        if fresh:
            b.download_and_prepare()
            b = builder(data_dir, image_size)
        tok = Path(b.data_dir) / TOKENIZER_FILE
        if not tok.exists():
            captions = [c.decode() for c in read_split(b, "train")["caption"]]
            tokenizer.write_tokenizer(captions, tok, TOKENIZER_VOCAB)
    n = {s: b.info.splits[s].num_examples for s in SPLITS}
    meta = dict(b.info.metadata)
    print(f"vlm_tuxpaint/{b.builder_config.name} {'built' if fresh else 'reused'} at {b.data_dir} from "
          f"{meta.get('deb')}: {n['train'] + n['test']} stamps ({meta.get('pictures')}), {n['train']} train, "
          f"{n['test']} test; skipped {meta.get('skipped')}; tokenizer {Tokenizer(tok).vocab_size} pieces")
    return b


def data_source(data_dir: str | Path, split: str, image_size: int = PREPARED_SIZE, encoded_images: bool = False):
    """Random-access source of examples (numpy image, or PNG bytes with `encoded_images`; bytes texts)."""
    b = builder(data_dir, image_size)
    if not b.is_prepared():
        raise FileNotFoundError(f"vlm_tuxpaint/{b.builder_config.name} not prepared in {data_dir}; call prepare()")
    decoders = {"image": tfds.decode.SkipDecoding()} if encoded_images else None
    return b.as_data_source(split=split, decoders=decoders)


def read_split(b: VlmTuxpaint, split: str) -> dict[str, np.ndarray]:
    """All examples of a split as stacked numpy arrays, sorted by id (texts as bytes)."""
    src = b.as_data_source(split=split)
    rows = sorted(src.__getitems__(list(range(len(src)))), key=lambda r: int(r["id"]))
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def load_split(data_dir: str | Path, split: str, image_size: int = PREPARED_SIZE) -> dict[str, Any]:
    """Eval arrays sorted by id: image uint8 [N,S,S,3], caption/category/path list[str], translations
    list[dict], id int64 [N]."""
    b = builder(data_dir, image_size)
    if not b.is_prepared():
        raise FileNotFoundError(f"vlm_tuxpaint/{b.builder_config.name} not prepared in {data_dir}; call prepare()")
    d = read_split(b, split)
    text = lambda k: [v.decode() for v in d[k]]  # noqa: E731
    return {"image": d["image"].astype(np.uint8), "caption": text("caption"), "category": text("category"),
            "path": text("path"), "translations": [json.loads(t) for t in text("translations")],
            "id": d["id"].astype(np.int64)}


# ------------------------------------------------------------------------------------ training and evals

class _Preprocess(grain.transforms.RandomMap):
    """PNG → augmentation parameters (`collate` augments a batch); caption (in a language drawn per example,
    English where missing) → tokens.

    An undecodable / oversized image or an empty / non-UTF-8 caption yields {robust.BAD: reason}.
    """

    def __init__(self, tok: Tokenizer, image_size: int, text_len: int, augment: dict,
                 languages: tuple[str, ...] = ("en",), max_pixels: int = pipeline.MAX_PIXELS):
        self.tok, self.image_size, self.text_len = tok, image_size, text_len
        self.augment, self.languages, self.max_pixels = dict(augment), tuple(languages), max_pixels

    def random_map(self, ex: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        image, reason = robust.decode_image(ex["image"], self.max_pixels)
        if image is None:
            return {robust.BAD: reason}
        caption = robust.decode_caption(ex["caption"])
        if caption is None:
            return {robust.BAD: "caption"}
        if self.languages != ("en",):  # no draw for English-only runs
            lang = self.languages[int(rng.integers(len(self.languages)))]
            if lang != "en":
                caption = _translations(ex.get("translations")).get(lang) or caption
        return {"image": image, "augment": augment.draw(rng, self.augment, image.shape),
                "text": self.tok.encode([caption], self.text_len)[0], "concept": np.int32(ex["id"])}

    def collate(self, elements: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
        """The batch: images augmented together (see `augment.collate`)."""
        return augment.collate(elements, self.augment, self.image_size)


def _translations(data: Any) -> dict[str, str]:
    """{lang: text} from the stored JSON ({} when missing or malformed)."""
    text = robust.decode_caption(data)
    try:
        out = json.loads(text) if text else {}
    except ValueError:
        return {}
    return out if isinstance(out, dict) else {}


@register("tuxpaint")
class TuxPaintPairs(TokenizerText):
    """Tux Paint stamps with their English descriptions; held-out stamps for image→caption retrieval."""

    DEFAULTS = dict(name="tuxpaint", data_dir="", image_size=32, text_len=32, augment={}, num_threads=-1,
                    languages=("en",))
    # languages: caption languages drawn per example ("en" or codes of the .txt files, e.g. "de", "pt_BR");
    # a stamp without that translation keeps its English caption. text_len 32 holds 98.6% of the train captions.

    def __init__(self, config: ml_collections.ConfigDict):
        check_keys(config, self.DEFAULTS, "data")
        cfg = {**self.DEFAULTS, **config.to_dict()}
        self.data_dir = cfg["data_dir"] or default_data_dir()
        self.image_size, self.text_len = int(cfg["image_size"]), int(cfg["text_len"])
        self.augment = dict(cfg["augment"] or {})
        self.num_threads = int(cfg["num_threads"])
        self.languages = tuple(cfg["languages"])
        prepare(self.data_dir, PREPARED_SIZE)
        self.tokenizer = Tokenizer(tokenizer_path(self.data_dir, PREPARED_SIZE))
        if self.languages != ("en",):
            known = {"en"}.union(*self._split("train")["translations"])
            unknown = [lang for lang in self.languages if lang not in known]
            if unknown:
                raise ValueError(f"data.languages {unknown} not in the stamp translations; valid: {sorted(known)}")

    def tokenize(self, texts: list[str]) -> np.ndarray:
        """int32 [N, text_len] token ids."""
        return self.tokenizer.encode(texts, self.text_len)

    def text_spec(self, batch_size: int) -> tuple[tuple[int, ...], np.dtype]:
        """Shape and dtype of a batch of model text inputs."""
        return (batch_size, self.text_len), np.dtype(np.int32)

    def train(self, batch_size: int, seed: int, process_index: int, process_count: int) -> Any:
        """Shuffled, augmented, tokenised, batched grain dataset of this process's shard of the train stamps."""
        src = data_source(self.data_dir, "train", PREPARED_SIZE, encoded_images=True)
        preprocess = _Preprocess(self.tokenizer, self.image_size, self.text_len, self.augment, self.languages)
        return pipeline.train_stream(src, preprocess, batch_size=batch_size, seed=seed, process_index=process_index,
                                     process_count=process_count, num_threads=self.num_threads)

    def _split(self, split: str) -> dict[str, Any]:
        return load_split(self.data_dir, split, PREPARED_SIZE)

    def eval_sets(self, names: list[str]) -> dict[str, EvalSet]:
        """"tuxpaint/test": test images → their captions among all test captions, with the pixel-NN captioner."""
        unknown = [n for n in names if n != "tuxpaint"]
        if unknown:
            raise ValueError(f"Unknown eval sets {unknown} for data 'tuxpaint'; valid: ['tuxpaint']")
        sets: dict[str, EvalSet] = {}
        if "tuxpaint" in names:
            test, train = self._split("test"), self._split("train")
            categories = np.asarray(test["category"])
            big = [c for c, n in collections.Counter(test["category"]).most_common() if n >= 10]
            sets["tuxpaint/test"] = EvalSet(
                images=_prep_images(test["image"], self.image_size), labels=np.arange(len(test["caption"])),
                class_names=list(test["caption"]), class_images=None, retrieval=True,
                subsets={c: categories == c for c in big},
                pixel_images=_prep_images(test["image"], PIXEL_BASELINE_SIZE),
                references=[[c] for c in test["caption"]],
                caption_pool_pixels=_prep_images(train["image"], PIXEL_BASELINE_SIZE),
                caption_pool_texts=list(train["caption"]))
        return sets

    def _language_sets(self, base: EvalSet, languages: list[str]) -> dict[str, EvalSet]:
        """The test set again with captions in each language (English where a stamp lacks it)."""
        translations = self._split("test")["translations"]
        return {f"tuxpaint/test/{lang}": dataclasses.replace(
                    base, class_names=[t.get(lang) or en for t, en in zip(translations, base.class_names)])
                for lang in languages}

    def evaluators(self, embedder: Any, config: ml_collections.ConfigDict) -> dict[str, Any]:
        """Zero-shot image→caption (and caption→image) retrieval among the test stamps."""
        sets = self.eval_sets(list(config.get("sets", ["tuxpaint"])))
        languages = [lang for lang in (config.get("languages", []) or []) if lang != "en"]
        if languages and "tuxpaint/test" in sets:
            sets.update(self._language_sets(sets["tuxpaint/test"], languages))
        templates = list(config.get("templates", None) or ["{}"])
        return {"zeroshot": ZeroShotEvaluator(embedder, sets, templates)}
