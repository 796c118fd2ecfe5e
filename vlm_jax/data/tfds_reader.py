"""Prepared TFDS datasets read without TensorFlow: array_record through `tfds.data_source`, tfrecord through a
small reader of its own (TFRecord framing + a hand-written `tf.train.Example` wire-format parser), both decoded per
the dataset's own feature spec (`features.json`).

A prepared dataset lives in `{data_dir}/{name}/[{config}/]{version}/` with `dataset_info.json`, `features.json`,
`{feature}.labels.txt` for class labels and shards `{name}-{split}.{tfrecord|array_record}-00000-of-000NN`.
Examples come back flat: nested features under "/"-joined keys (`captions/text`), images as uint8 [H, W, C]
arrays, class labels and integer scalars as int, text as str, sequences as lists.

  split = open_split(data_dir, "imagenet2012", "validation")
  for ex in split.examples(["image", "label"], limit=100):
      ...
"""
from __future__ import annotations

import io
import json
import re
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

_VERSION = re.compile(r"^\d+\.\d+\.\d+$")
_CHUNK = 64  # examples handed to the decode threads at a time


class TFRecordError(ValueError):
    """A malformed TFRecord file or tf.train.Example."""


# ---------------------------------------------------------------------------------------------------------------
# TFRecord framing: uint64 length, uint32 masked CRC-32C of the length, data, uint32 masked CRC-32C of the data.

def read_tfrecords(path: str | Path, verify: bool = False) -> Iterator[bytes]:
    """The records of one TFRecord file. The length's CRC is always checked (it catches a misframed or truncated
    file at once); the data's too with `verify` (pure Python: slow on large images)."""
    from vlm_jax.tfrecord import masked_crc

    with open(path, "rb") as f:
        offset = 0
        while True:
            head = f.read(12)
            if not head:
                return
            if len(head) < 12:
                raise TFRecordError(f"{path}: truncated record header at byte {offset}")
            length, length_crc = struct.unpack("<QI", head)
            if masked_crc(head[:8]) != length_crc:
                raise TFRecordError(f"{path}: bad length checksum at byte {offset} (not a TFRecord file?)")
            data = f.read(length)
            tail = f.read(4)
            if len(data) < length or len(tail) < 4:
                raise TFRecordError(f"{path}: truncated record at byte {offset}")
            if verify and masked_crc(data) != struct.unpack("<I", tail)[0]:
                raise TFRecordError(f"{path}: bad data checksum in the record at byte {offset}")
            offset += 16 + length
            yield data


# ---------------------------------------------------------------------------------------------------------------
# tf.train.Example wire format:
#   Example { Features features = 1 }   Features { map<string, Feature> feature = 1 }  (entry: key = 1, value = 2)
#   Feature { oneof: BytesList bytes_list = 1 | FloatList float_list = 2 | Int64List int64_list = 3 }
#   BytesList { repeated bytes value = 1 }  FloatList { repeated float value = 1 }  Int64List { repeated int64 = 1 }
# Numeric lists may come packed (one length-delimited field) or unpacked (one field per value).

def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise TFRecordError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise TFRecordError("varint longer than 10 bytes")


def _fields(buf: memoryview) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) of each field of a message: an int for varints, a memoryview for
    length-delimited and fixed-width fields."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire == 2:
            size, pos = _varint(buf, pos)
            value, pos = buf[pos:pos + size], pos + size
        elif wire == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        else:
            raise TFRecordError(f"unsupported wire type {wire} (field {number})")
        if pos > end:
            raise TFRecordError(f"field {number} runs past the end of its message")
        yield number, wire, value


def _int64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _parse_feature(buf: memoryview) -> tuple[str, list]:
    """('bytes' | 'float' | 'int64', values) of one Feature message (an empty Feature: ('bytes', []))."""
    kind, values = "bytes", []
    for number, _, payload in _fields(buf):
        if number == 1:
            kind, values = "bytes", [bytes(v) for n, w, v in _fields(payload) if n == 1 and w == 2]
        elif number == 2:
            kind, values = "float", []
            for n, w, v in _fields(payload):
                if n == 1 and w == 2:  # packed
                    values.extend(np.frombuffer(v, "<f4").tolist())
                elif n == 1 and w == 5:
                    values.append(struct.unpack("<f", v)[0])
        elif number == 3:
            kind, values = "int64", []
            for n, w, v in _fields(payload):
                if n == 1 and w == 2:  # packed
                    pos = 0
                    while pos < len(v):
                        x, pos = _varint(v, pos)
                        values.append(_int64(x))
                elif n == 1 and w == 0:
                    values.append(_int64(v))
    return kind, values


def parse_example(data: bytes, keys: Iterable[str] | None = None) -> dict[str, tuple[str, list]]:
    """A serialized tf.train.Example → {feature key: (kind, values)}; only `keys` when given (the rest are skipped
    unparsed)."""
    wanted = None if keys is None else set(keys)
    out: dict[str, tuple[str, list]] = {}
    for number, wire, features in _fields(memoryview(data)):
        if number != 1 or wire != 2:
            continue
        for n, w, entry in _fields(features):
            if n != 1 or w != 2:
                continue
            key, value = None, memoryview(b"")
            for en, ew, ev in _fields(entry):
                if en == 1 and ew == 2:
                    key = bytes(ev).decode("utf-8")
                elif en == 2 and ew == 2:
                    value = ev
            if key is not None and (wanted is None or key in wanted):
                out[key] = _parse_feature(value)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Feature specs (features.json) and decoding.

@dataclass(frozen=True)
class FeatureSpec:
    """One flat feature: kind 'image' | 'class_label' | 'text' | 'tensor' | 'bbox' | 'other'."""

    kind: str
    dtype: str = "string"
    shape: tuple[int, ...] = ()
    sequence: bool = False  # inside a tfds Sequence: a list per example
    channels: int = 3
    names: tuple[str, ...] | None = None  # class label names (from `{key}.labels.txt`)


def _shape(node: dict) -> tuple[int, ...]:
    return tuple(int(d) for d in node.get("shape", {}).get("dimensions", []))


def flat_specs(features: dict, prefix: str = "", sequence: bool = False) -> dict[str, FeatureSpec]:
    """features.json → {flat key: FeatureSpec}, nested FeaturesDicts and Sequences flattened with '/'."""
    out: dict[str, FeatureSpec] = {}
    if "featuresDict" in features:
        for key, sub in features["featuresDict"]["features"].items():
            out.update(flat_specs(sub, f"{prefix}{key}/", sequence))
        return out
    key = prefix.rstrip("/")
    if "sequence" in features:
        return flat_specs(features["sequence"]["feature"], prefix, True)
    if "image" in features:
        dims = _shape(features["image"])
        return {key: FeatureSpec("image", "uint8", dims, sequence, dims[-1] if dims else 3)}
    if "classLabel" in features:
        return {key: FeatureSpec("class_label", "int64", (), sequence)}
    if "text" in features:
        return {key: FeatureSpec("text", "string", (), sequence)}
    if "boundingBox" in features:
        return {key: FeatureSpec("bbox", "float32", (4,), sequence)}
    if "tensor" in features:
        t = features["tensor"]
        return {key: FeatureSpec("tensor", t.get("dtype", "string"), _shape(t), sequence)}
    return {key: FeatureSpec("other", "", (), sequence)}


def decode_image(data: bytes, channels: int = 3) -> np.ndarray:
    """PNG/JPEG bytes → uint8 [H, W, channels] (grayscale, CMYK or palette images converted)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        if channels == 1:
            return np.asarray(im.convert("L"))[..., None]
        return np.asarray(im.convert("RGBA" if channels == 4 else "RGB"))


def decode_value(spec: FeatureSpec, kind: str, values: list) -> Any:
    """One feature's parsed values → its Python/NumPy value per its spec."""
    if spec.kind == "image":
        images = [decode_image(v, spec.channels) for v in values]
        return images if spec.sequence else images[0]
    if spec.kind == "text" or (spec.kind == "tensor" and spec.dtype == "string"):
        texts = [v.decode("utf-8", "replace") for v in values]
        return texts if spec.sequence or spec.shape else texts[0]
    if kind in ("int64", "float"):
        arr = np.asarray(values, np.int64 if kind == "int64" else np.float32)
        if spec.dtype and spec.dtype not in ("string", "int64") and spec.kind != "class_label":
            arr = arr.astype(spec.dtype)
        if spec.sequence:
            return arr.reshape((-1, *spec.shape)) if spec.shape else arr.tolist()
        if spec.shape:
            return arr.reshape(spec.shape)
        return arr.item() if arr.size == 1 else arr
    return values


def decode_example(parsed: dict[str, tuple[str, list]], specs: dict[str, FeatureSpec],
                   keys: Sequence[str]) -> dict[str, Any]:
    """The `keys` of a parsed example, decoded (a sequence feature missing from the record is empty)."""
    out = {}
    for key in keys:
        spec = specs.get(key, FeatureSpec("other"))
        if key not in parsed:
            if spec.sequence:
                out[key] = []
                continue
            raise KeyError(f"feature {key!r} is not in the record (it has {sorted(parsed)})")
        out[key] = decode_value(spec, *parsed[key])
    return out


def _flatten(example: Any, prefix: str = "") -> dict[str, Any]:
    """A nested tfds example (data_source) → flat keys, bytes as str, NumPy scalars as Python numbers."""
    if isinstance(example, dict):
        out: dict[str, Any] = {}
        for k, v in example.items():
            out.update(_flatten(v, f"{prefix}{k}/"))
        return out
    key = prefix.rstrip("/")
    if isinstance(example, bytes):
        return {key: example.decode("utf-8", "replace")}
    if isinstance(example, np.ndarray) and example.ndim == 0:
        return _flatten(example.item(), prefix)
    if isinstance(example, (list, tuple)) or (isinstance(example, np.ndarray) and example.dtype.kind in "OSU"):
        values = example.tolist() if isinstance(example, np.ndarray) else list(example)
        return {key: [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in values]}
    if isinstance(example, np.generic):
        return {key: example.item()}
    return {key: example}


# ---------------------------------------------------------------------------------------------------------------
# Finding a prepared dataset.

def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(p) for p in name.split("."))


def _versions(folder: Path) -> list[Path]:
    """Version folders (with a dataset_info.json) directly under `folder`, newest first."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir()
             if p.is_dir() and _VERSION.match(p.name) and (p / "dataset_info.json").exists()]
    return sorted(found, key=lambda p: _version_key(p.name), reverse=True)


def find_version_dir(data_dir: str | Path, name: str, config: str | None = None,
                     version: str | None = None) -> tuple[Path | None, list[str]]:
    """(the newest prepared version folder of `name` (in `config` when given; else unconfigured, else its only
    config), the paths looked at). None when there is none."""
    root = Path(data_dir).expanduser() / name
    looked = []
    folders = [root / config] if config else [root]
    if not config and root.is_dir():  # no config named: the dataset's only config
        subs = [p for p in sorted(root.iterdir()) if p.is_dir() and not _VERSION.match(p.name) and _versions(p)]
        if len(subs) == 1:
            folders.append(subs[0])
    for folder in folders:
        looked.append(str(folder / (version or "<version>") / "dataset_info.json"))
        candidates = _versions(folder)
        if version:
            candidates = [p for p in candidates if p.name == version]
        if candidates:
            return candidates[0], looked
    return None, looked


@dataclass
class SplitReader:
    """One split of a prepared TFDS dataset: its features, length and decoded examples."""

    name: str
    split: str
    path: Path | None  # the version folder (None: a dataset tfds found itself, e.g. under tfds.testing.mock_data)
    file_format: str  # "tfrecord" | "array_record"
    specs: dict[str, FeatureSpec]
    num_examples: int
    files: list[Path] = field(default_factory=list)
    source: Any = None  # the tfds data source (array_record)
    verify: bool = False  # tfrecord: check every record's data checksum too

    def label_names(self, key: str = "label") -> list[str] | None:
        """The class names of ClassLabel feature `key` (None when the dataset has none written)."""
        spec = self.specs.get(key)
        if spec is not None and spec.names is not None:
            return list(spec.names)
        return None

    def _records(self) -> Iterator[bytes]:
        for path in self.files:
            yield from read_tfrecords(path, self.verify)

    def examples(self, keys: Sequence[str], limit: int = 0, transform: Callable[[dict], Any] | None = None,
                 workers: int = 1) -> Iterator[Any]:
        """Decoded examples (flat dicts of `keys`, through `transform` when given) in file order, the first `limit`
        (0: all); images are decoded and `transform`ed in `workers` threads."""
        missing = [k for k in keys if k not in self.specs] if self.specs else []
        if missing:
            raise KeyError(f"{self.name}: no feature {missing} (it has {sorted(self.specs)})")
        total = self.num_examples if not limit else min(limit, self.num_examples)
        fn = transform or (lambda ex: ex)

        if self.file_format == "array_record":
            def work(i: int) -> Any:
                flat = _flatten(self.source[i])
                return fn({k: flat[k] for k in keys})
            items: Iterable[Any] = range(total)
        else:
            def work(raw: bytes) -> Any:
                return fn(decode_example(parse_example(raw, keys), self.specs, keys))

            def first(n: int) -> Iterator[bytes]:
                for i, raw in enumerate(self._records()):
                    if i >= n:
                        return
                    yield raw
            items = first(total)
        yield from _map_chunks(work, items, workers)


def _map_chunks(fn: Callable, items: Iterable, workers: int) -> Iterator[Any]:
    """`map(fn, items)` in order, in `workers` threads, a chunk at a time (memory stays bounded)."""
    if workers <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(workers) as pool:
        chunk: list = []
        for item in items:
            chunk.append(item)
            if len(chunk) == _CHUNK * workers:
                yield from pool.map(fn, chunk)
                chunk = []
        yield from pool.map(fn, chunk)


def _read_specs(version_dir: Path) -> dict[str, FeatureSpec]:
    """Flat specs from features.json, with the class names of `{key}.labels.txt` files."""
    path = version_dir / "features.json"
    if not path.exists():
        return {}
    specs = flat_specs(json.loads(path.read_text()))
    for key, spec in list(specs.items()):
        labels = version_dir / f"{key.replace('/', '-')}.labels.txt"
        if spec.kind == "class_label" and not labels.exists():
            labels = version_dir / f"{key}.labels.txt"
        if spec.kind == "class_label" and labels.exists():
            names = tuple(line for line in labels.read_text().splitlines() if line)
            specs[key] = FeatureSpec(spec.kind, spec.dtype, spec.shape, spec.sequence, spec.channels, names)
    return specs


def _file_format(info: dict, version_dir: Path, name: str, split: str) -> str:
    fmt = info.get("fileFormat")
    if fmt:
        return {"tfrecord": "tfrecord", "array_record": "array_record"}.get(fmt, fmt)
    for candidate in ("tfrecord", "array_record"):  # old dataset_info.json: no fileFormat (then tfrecord)
        if list(version_dir.glob(f"{name}-{split}.{candidate}*")):
            return candidate
    return "tfrecord"


def open_split(data_dir: str | Path, name: str, split: str, config: str | None = None,
               version: str | None = None, verify: bool = False) -> SplitReader:
    """The prepared split `split` of TFDS dataset `name` in `data_dir`; raises FileNotFoundError naming where it
    looked (and how to prepare it) when it is not there."""
    version_dir, looked = find_version_dir(data_dir, name, config, version)
    if version_dir is None:
        source = _tfds_data_source(data_dir, name, split, config, version)  # e.g. tfds.testing.mock_data
        if source is None:
            raise FileNotFoundError(
                f"TFDS dataset {name!r}{f' (config {config!r})' if config else ''} is not prepared in {data_dir}: "
                f"looked for {' and '.join(looked)}. Prepare it with `tfds build {name}"
                f"{f'/{config}' if config else ''} --data_dir {data_dir}` (on a machine with TensorFlow; either "
                f"file format works) and pass that folder as the data dir")
        return SplitReader(name, split, None, "array_record", {}, len(source), source=source)
    info = json.loads((version_dir / "dataset_info.json").read_text())
    splits = {s["name"]: s for s in info.get("splits", [])}
    if splits and split not in splits:
        raise FileNotFoundError(f"{version_dir} has no split {split!r} (it has {sorted(splits)})")
    fmt = _file_format(info, version_dir, name, split)
    specs = _read_specs(version_dir)
    if fmt == "array_record":
        source = _data_source_from_dir(data_dir, version_dir, name, split, config)
        return SplitReader(name, split, version_dir, fmt, specs, len(source), source=source)
    if fmt != "tfrecord":
        raise ValueError(f"{version_dir}: file format {fmt!r} is not readable here (tfrecord or array_record)")
    files = sorted(version_dir.glob(f"{name}-{split}.tfrecord-*"))
    if not files:
        raise FileNotFoundError(f"{version_dir} has no {name}-{split}.tfrecord-* shards")
    lengths = [int(n) for n in splits.get(split, {}).get("shardLengths", [])]
    num = sum(lengths) if lengths else sum(1 for f in files for _ in read_tfrecords(f))
    return SplitReader(name, split, version_dir, fmt, specs, num, files=files, verify=verify)


def _tfds_data_source(data_dir: str | Path, name: str, split: str, config: str | None,
                      version: str | None) -> Any:
    """`tfds.data_source` of a dataset this module did not find on disk (None when tfds cannot give one): tfds'
    own lookup, and what `tfds.testing.mock_data` mocks. Never downloads."""
    import tensorflow_datasets as tfds

    kwargs = {k: v for k, v in (("config", config), ("version", version)) if v}
    try:
        return tfds.data_source(name, split=split, data_dir=str(data_dir), download=False,
                                builder_kwargs=kwargs or None)
    except Exception:  # noqa: BLE001 - not there (or its builder needs TensorFlow): the caller explains
        return None


def _data_source_from_dir(data_dir: str | Path, version_dir: Path, name: str, split: str,
                          config: str | None) -> Any:
    """`tfds.data_source` of a prepared array_record dataset; from its folder alone when its builder class cannot
    be imported without TensorFlow (e.g. coco_captions)."""
    import tensorflow_datasets as tfds

    kwargs = {"version": version_dir.name, **({"config": config} if config else {})}
    if not config and version_dir.parent.name != name:
        kwargs["config"] = version_dir.parent.name
    try:
        return tfds.data_source(name, split=split, data_dir=str(data_dir), download=False, builder_kwargs=kwargs)
    except Exception:  # noqa: BLE001 - the builder class needs TensorFlow: read the folder's metadata instead
        return tfds.builder_from_directory(str(version_dir)).as_data_source(split=split)
