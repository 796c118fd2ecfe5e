"""The standard zero-shot benchmark suite (vlm_jax.evals.standard) and its TFDS reader (vlm_jax.data.tfds_reader).

TFDS-format datasets are built here by the test's own TFRecord / tf.train.Example encoder (an independent writer),
with the real builders' features.json where tfds can give them without TensorFlow (imagenet2012, cifar10,
imagenet_r), and read back; cifar10 also through `tfds.testing.mock_data` (the array_record `tfds.data_source`
path). Accuracy and recall are checked against a brute-force float64 computation from independently computed
embeddings, a planted embedder (image embedding = its class's text embedding) must score 100%, and a tiny trained
run evaluates the suite in training and through `python -m vlm_jax.tools.evaluate --suite` (clip_benchmark JSON).
"""
import functools
import io
import json
import re
import struct
import subprocess
import sys
import zlib
from importlib import resources
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from vlm_jax.data.tfds_reader import TFRecordError, open_split, read_tfrecords
from vlm_jax.evals.embedder import Embedder
from vlm_jax.evals.standard import (BENCHMARKS, SuiteEvaluator, class_names, parse_suite, prepare_image,
                                    subset_indices, templates)

ROOT = Path(__file__).resolve().parents[1]
SIZE = 32  # the tiny models' image size
IMAGENET_LABELS = [1, 7, 33, 151, 207, 291, 409, 530, 817, 965]  # none is a duplicated OpenAI name
R_LABELS = [1, 2, 4, 9, 99, 150, 980]  # in ImageNet-R's 200 classes
N_COCO, CAPS = 12, 5
VOCAB = 1 << 16
D = 64
CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


# ------------------------------------------------------------------------------------------------------------------
# An independent TFRecord + tf.train.Example writer.

def crc32c_bitwise(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def masked(data: bytes) -> int:
    crc = crc32c_bitwise(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative int64: ten-byte two's complement
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def field(number: int, payload: bytes) -> bytes:  # length-delimited
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def feature(kind: str, values: list, packed: bool = True) -> bytes:
    if kind == "bytes":
        inner = b"".join(field(1, v) for v in values)
        return field(1, inner)
    if kind == "float":
        if packed:
            inner = field(1, b"".join(struct.pack("<f", v) for v in values))
        else:
            inner = b"".join(varint(1 << 3 | 5) + struct.pack("<f", v) for v in values)
        return field(2, inner)
    if packed:
        inner = field(1, b"".join(varint(v) for v in values))
    else:
        inner = b"".join(varint(1 << 3 | 0) + varint(v) for v in values)
    return field(3, inner)


def example(features: dict) -> bytes:
    """{key: (kind, values[, packed])} → serialized tf.train.Example."""
    entries = b"".join(field(1, field(1, k.encode()) + field(2, feature(*spec))) for k, spec in features.items())
    return field(1, entries)


def write_tfrecord(path: Path, records: list[bytes]) -> None:
    with open(path, "wb") as f:
        for r in records:
            length = struct.pack("<Q", len(r))
            f.write(length + struct.pack("<I", masked(length)) + r + struct.pack("<I", masked(r)))


def write_array_record(path: Path, records: list[bytes]) -> None:
    from array_record.python.array_record_module import ArrayRecordWriter

    writer = ArrayRecordWriter(str(path), "group_size:1")
    for r in records:
        writer.write(r)
    writer.close()


def write_dataset(data_dir: Path, name: str, version: str, split: str, records: list[bytes], features,
                  config: str | None = None, shards: int = 2, fmt: str = "tfrecord") -> Path:
    """A prepared TFDS dataset: dataset_info.json, features.json (+ labels) and tfrecord (or array_record) shards."""
    folder = data_dir / name / (config or "") / version
    folder.mkdir(parents=True)
    features.save_config(str(folder))
    features.save_metadata(str(folder))
    bounds = np.linspace(0, len(records), shards + 1).astype(int)
    write = write_tfrecord if fmt == "tfrecord" else write_array_record
    for i in range(shards):
        write(folder / f"{name}-{split}.{fmt}-{i:05d}-of-{shards:05d}", records[bounds[i]:bounds[i + 1]])
    info = {"name": name, "version": version, "fileFormat": fmt, **({"configName": config} if config else {}),
            "splits": [{"name": split, "filepathTemplate": "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}",
                        "shardLengths": [str(int(b - a)) for a, b in zip(bounds[:-1], bounds[1:])]}]}
    (folder / "dataset_info.json").write_text(json.dumps(info))
    return folder


def color(code: int) -> np.ndarray:
    """The colour planting `code` (< 4096): 16 levels per channel, at the middle of each level."""
    return np.array([code % 16, code // 16 % 16, code // 256], np.float64) * 16 + 8


def make_image(rng, code: int, h: int, w: int) -> np.ndarray:
    noise = rng.integers(-3, 4, size=(h, w, 3))
    return np.clip(color(code)[None, None] + noise, 0, 255).astype(np.uint8)


def encode(img: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


def decoded(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def coco_features():
    F = tfds.features
    return F.FeaturesDict({
        "image": F.Image(encoding_format="jpeg"), "image/filename": F.Text(), "image/id": np.int64,
        "objects": F.Sequence({"area": np.int64, "bbox": F.BBoxFeature(), "id": np.int64, "is_crowd": np.bool_,
                               "label": F.ClassLabel(num_classes=80)}),
        "captions": F.Sequence({"text": np.str_, "id": np.int64})})


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    """imagenet2012 (PNG, mixed sizes), imagenet_r, cifar10 and coco_captions/2014 (JPEG, 5–6 captions), as
    tfrecord; returns (data dir, the encoded images and values written)."""
    d = tmp_path_factory.mktemp("tfds")
    rng = np.random.default_rng(0)
    written = {}
    sizes = [(32, 32), (40, 56), (64, 48), (33, 32)]

    recs, imgs = [], []
    for i in range(20):
        label = IMAGENET_LABELS[i * i % len(IMAGENET_LABELS)]  # unbalanced classes
        png = encode(make_image(rng, label, *sizes[i % 4]), "PNG")
        imgs.append((png, label))
        recs.append(example({"image": ("bytes", [png]), "label": ("int64", [label], i % 2 == 0),
                             "file_name": ("bytes", [f"ILSVRC2012_val_{i:08d}.JPEG".encode()])}))
    write_dataset(d, "imagenet2012", "5.1.0", "validation", recs,
                  tfds.builder("imagenet2012", data_dir=d).info.features)
    written["imagenet1k"] = imgs

    recs, imgs = [], []
    for i, label in enumerate(R_LABELS):
        png = encode(make_image(rng, label, 48, 40), "PNG")
        imgs.append((png, label))
        recs.append(example({"image": ("bytes", [png]), "label": ("int64", [label]),
                             "file_name": ("bytes", [b"x.jpg"])}))
    write_dataset(d, "imagenet_r", "0.2.0", "test", recs, tfds.builder("imagenet_r", data_dir=d).info.features,
                  shards=1)
    written["imagenet-r"] = imgs

    recs, imgs = [], []
    for i in range(15):
        label = i % 10
        png = encode(make_image(rng, label, 32, 32), "PNG")
        imgs.append((png, label))
        recs.append(example({"id": ("bytes", [f"test_{i}".encode()]), "image": ("bytes", [png]),
                             "label": ("int64", [label])}))
    write_dataset(d, "cifar10", "3.0.2", "test", recs, tfds.builder("cifar10", data_dir=d).info.features)
    written["cifar10"] = imgs
    written["records/cifar10"] = recs

    recs, imgs = [], []
    for i in range(N_COCO):
        jpg = encode(make_image(rng, 1000 + i, 36 + 4 * (i % 3), 44), "JPEG")
        caps = [f"picture {i} told as story {j} of {CAPS}" for j in range(CAPS + (i == 3))]
        imgs.append((jpg, caps))
        n_obj = i % 3
        recs.append(example({
            "image": ("bytes", [jpg]), "image/filename": ("bytes", [f"COCO_val2014_{i:012d}.jpg".encode()]),
            "image/id": ("int64", [-5 - i], False),  # unpacked, negative
            "objects/area": ("int64", list(range(n_obj))), "objects/id": ("int64", list(range(n_obj)), False),
            "objects/bbox": ("float", [0.1, 0.2, 0.5, 0.75] * n_obj, i % 2 == 0),
            "objects/is_crowd": ("int64", [0] * n_obj), "objects/label": ("int64", [3] * n_obj),
            "captions/text": ("bytes", [c.encode() for c in caps]),
            "captions/id": ("int64", list(range(len(caps))))}))
    write_dataset(d, "coco_captions", "1.1.0", "test", recs, coco_features(), config="2014", shards=3)
    written["mscoco_captions"] = imgs
    written["records/mscoco_captions"] = recs
    return d, written


# ------------------------------------------------------------------------------------------------------------------
# Embedders: planted embeddings (image = its class's / caption's text embedding), with noise for the brute-force
# checks and without it for the 100% check.

@functools.lru_cache(maxsize=None)
def planted_codes() -> dict[str, int]:
    """Every prompt → its class's ImageNet index (CIFAR-10: its label), every caption → 1000 + its image."""
    names = clip_json("en_classnames.json")["imagenet1k"]
    tpl = clip_json("en_zeroshot_classification_templates.json")
    code = {t.format(c=n): names.index(n) for n in names for t in tpl["imagenet1k"]}  # a duplicate name: its first
    cifar = {t.format(c=n): c for c, n in enumerate(CIFAR10) for t in tpl["cifar10"]}
    assert not set(code) & set(cifar)
    code.update(cifar)
    for i in range(N_COCO):
        for j in range(CAPS + 1):
            code[f"picture {i} told as story {j} of {CAPS}"] = 1000 + i
    return code


def tokenize(texts) -> np.ndarray:
    """[N, 2]: a hash of the text, its planted code."""
    return np.array([[zlib.crc32(t.encode()) % VOCAB, planted_codes().get(t, 4095)] for t in texts], np.int32)


def image_fn(p, x):
    """The planted embedding of the image's colour code (`color`), plus a random projection of its pixels."""
    level = jnp.floor((jnp.mean(x, axis=(1, 2)) + 1) * 127.5 / 16).astype(jnp.int32)
    return p["e"][level[:, 0] + 16 * level[:, 1] + 256 * level[:, 2]] + x.reshape(x.shape[0], -1) @ p["w"]


def text_fn(p, t):
    """The planted embedding of the text's code, plus a random embedding of its hash."""
    return p["e"][t[:, 1]] + p["tok"][t[:, 0]]


def embedder_params(noise: bool, seed: int = 1) -> dict:
    """Planted embeddings, with noise (a model that is right some of the time) or without (always right)."""
    rng = np.random.default_rng(seed)
    return {"e": jnp.asarray(unit(rng.normal(size=(4096, D))), jnp.float32),
            "w": jnp.asarray(rng.normal(size=(SIZE * SIZE * 3, D)) * 0.012 * noise, jnp.float32),
            "tok": jnp.asarray(rng.normal(size=(VOCAB, D)) * 0.15 * noise, jnp.float32)}


@pytest.fixture(scope="module")
def noisy():
    return Embedder(image_fn, text_fn, tokenize, batch_size=8), embedder_params(True)


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def reference_prep(img: np.ndarray, size: int = SIZE) -> np.ndarray:
    """Shorter side to `size` (bicubic), centre crop, [-1, 1] — written again here, float64."""
    h, w = img.shape[:2]
    scale = size / min(h, w)
    nh, nw = (size, int(w * scale)) if h <= w else (int(h * scale), size)
    im = Image.fromarray(img)
    if (nh, nw) != (h, w):
        im = im.resize((nw, nh), Image.BICUBIC)
    top, left = round((nh - size) / 2), round((nw - size) / 2)
    arr = np.asarray(im, np.float64)[top:top + size, left:left + size]
    return arr / 127.5 - 1.0


def reference_images(params, images) -> np.ndarray:
    """`image_fn` again, in float64 NumPy, on `reference_prep`ared images."""
    e, w = (np.asarray(params[k], np.float64) for k in ("e", "w"))
    out = []
    for im in images:
        x = reference_prep(im)
        level = np.floor((x.mean(axis=(0, 1)) + 1) * 127.5 / 16).astype(int)
        out.append(e[level[0] + 16 * level[1] + 256 * level[2]] + x.ravel() @ w)
    return unit(np.stack(out))


def reference_texts(params, texts) -> np.ndarray:
    codes = planted_codes()
    e, tok = (np.asarray(params[k], np.float64) for k in ("e", "tok"))
    return unit(np.stack([e[codes.get(t, 4095)] + tok[zlib.crc32(t.encode()) % VOCAB] for t in texts]))


def clip_json(name):
    return json.loads((resources.files("clip_benchmark") / "datasets" / name).read_text())


def tfds_wnids() -> list[str]:
    return (Path(tfds.__file__).parent / "datasets/imagenet2012/labels.txt").read_text().split()


def imagenet_r_wnids() -> set[str]:
    source = (resources.files("clip_benchmark") / "datasets" / "builder.py").read_text()
    return set(re.findall(r"'(n\d{8})'", re.search(r"imagenet_r_wnids = \{([^}]*)\}", source).group(1)))


def brute_classification(img, cls, labels):
    scores = img @ cls.T
    order = [sorted(range(cls.shape[0]), key=lambda c: -s[c]) for s in scores]
    acc1 = np.mean([o[0] == y for o, y in zip(order, labels)])
    acc5 = np.mean([y in o[:5] for o, y in zip(order, labels)]) if cls.shape[0] >= 5 else float("nan")
    recalls = [np.mean([o[0] == c for o, y in zip(order, labels) if y == c]) for c in sorted(set(labels))]
    return {"acc1": acc1, "acc5": acc5, "mean_per_class_recall": np.mean(recalls)}


def brute_retrieval(img, txt, owner):
    out = {}
    for k in (1, 5, 10):
        t2i = [owner[t] in np.argsort(-(txt[t] @ img.T))[:k] for t in range(len(txt))]
        i2t = [any(owner[j] == i for j in np.argsort(-(img[i] @ txt.T))[:k]) for i in range(len(img))]
        out[f"image_retrieval_recall@{k}"] = np.mean(t2i)
        out[f"text_retrieval_recall@{k}"] = np.mean(i2t)
    return out


def expected_class_embeddings(params, dataset, names):
    tpl = clip_json("en_zeroshot_classification_templates.json")
    tpl = tpl.get(dataset) or tpl["imagenet1k"]
    return unit(np.mean([reference_texts(params, [t.format(c=n) for n in names]) for t in tpl], axis=0))


# ------------------------------------------------------------------------------------------------------------------

def test_class_names_and_templates_come_from_clip_benchmark():
    names = clip_json("en_classnames.json")["imagenet1k"]
    tpl = clip_json("en_zeroshot_classification_templates.json")
    assert class_names(BENCHMARKS["imagenet1k"]) == names and len(templates(BENCHMARKS["imagenet1k"])) == 80
    assert templates(BENCHMARKS["imagenetv2"]) == tpl["imagenet1k"]
    assert templates(BENCHMARKS["cifar10"]) == tpl["cifar10"] and len(tpl["cifar10"]) == 18
    assert class_names(BENCHMARKS["cifar10"])[:2] == ["airplane", "automobile"]
    c100 = class_names(BENCHMARKS["cifar100"])
    assert len(c100) == 100 == len(set(c100)) and c100 == sorted(c100) and "aquarium_fish" in c100
    # ImageNet-R/A: 200 of the 1000 classes, in TFDS' (sorted wnid) label order
    wnids = tfds_wnids()
    for name in ("imagenet-r", "imagenet-a"):
        sub = subset_indices(name)
        assert len(sub) == 200 and np.all(np.diff(sub) > 0)
        assert class_names(BENCHMARKS[name]) == [names[i] for i in sub]
    assert wnids[subset_indices("imagenet-r")[0]] == "n01443537"  # goldfish
    assert "torch" not in sys.modules


def test_bad_suite_names_and_missing_data(tmp_path):
    with pytest.raises(ValueError, match=r"unknown benchmark 'imagenet3'; valid names: cifar10, cifar100, .*"
                                         r"imagenet1k.*mscoco_captions"):
        parse_suite("imagenet,imagenet3")
    with pytest.raises(ValueError, match="flickr30k.*TFDS has no flickr30k builder"):
        parse_suite("flickr30k")
    assert [b.dataset for b in parse_suite("imagenet, coco,imagenet1k")] == ["imagenet1k", "mscoco_captions"]
    with pytest.raises(FileNotFoundError) as err:
        open_split(tmp_path, "imagenet2012", "validation")
    assert str(tmp_path / "imagenet2012" / "<version>" / "dataset_info.json") in str(err.value)
    assert "tfds build imagenet2012" in str(err.value)
    with pytest.raises(FileNotFoundError, match=r"coco_captions.*config '2014'.*coco_captions/2014/<version>"):
        SuiteEvaluator(None, "coco", tmp_path, SIZE)


def test_tfrecord_reader_round_trip(tfds_dir):
    d, written = tfds_dir
    coco = open_split(d, "coco_captions", "test", "2014", verify=True)
    assert coco.num_examples == N_COCO and len(coco.files) == 3 and coco.file_format == "tfrecord"
    keys = ["image", "captions/text", "captions/id", "image/id", "image/filename", "objects/bbox", "objects/label"]
    got = list(coco.examples(keys, workers=2))
    assert len(got) == N_COCO
    for i, (ex, (jpg, caps)) in enumerate(zip(got, written["mscoco_captions"])):
        np.testing.assert_array_equal(ex["image"], decoded(jpg))
        assert ex["captions/text"] == caps and ex["captions/id"] == list(range(len(caps)))
        assert ex["image/id"] == -5 - i and ex["image/filename"] == f"COCO_val2014_{i:012d}.jpg"
        np.testing.assert_allclose(ex["objects/bbox"], np.tile([0.1, 0.2, 0.5, 0.75], (i % 3, 1)), rtol=1e-7)
        assert ex["objects/label"] == [3] * (i % 3)
    assert len(list(coco.examples(["captions/text"], limit=5))) == 5
    imagenet = open_split(d, "imagenet2012", "validation")
    assert imagenet.label_names()[:2] == ["n01440764", "n01443537"] and imagenet.specs["label"].kind == "class_label"
    labels = [ex["label"] for ex in imagenet.examples(["label"])]
    assert labels == [lab for _, lab in written["imagenet1k"]]
    with pytest.raises(KeyError, match="no feature"):
        next(imagenet.examples(["image", "caption"]))
    # framing checks: a flipped data byte (verify=True), a flipped length byte (always)
    shard = imagenet.files[0]
    raw = bytearray(shard.read_bytes())
    raw[40] ^= 0xFF
    bad = shard.parent / "bad.tfrecord"
    bad.write_bytes(bytes(raw))
    assert len(list(read_tfrecords(bad))) == 10
    with pytest.raises(TFRecordError, match="bad data checksum"):
        list(read_tfrecords(bad, verify=True))
    raw[40] ^= 0xFF
    raw[2] ^= 0xFF
    bad.write_bytes(bytes(raw))
    with pytest.raises(TFRecordError, match="bad length checksum"):
        list(read_tfrecords(bad))
    bad.unlink()


def test_array_record_files_read_through_tfds_data_source(tfds_dir, tmp_path):
    """The same records as array_record files: tfds.data_source reads cifar10 (its builder imports without
    TensorFlow) and coco_captions (its builder needs TensorFlow: read from the folder's metadata)."""
    _, written = tfds_dir
    write_dataset(tmp_path, "cifar10", "3.0.2", "test", written["records/cifar10"],
                  tfds.builder("cifar10", data_dir=tmp_path).info.features, fmt="array_record")
    write_dataset(tmp_path, "coco_captions", "1.1.0", "test", written["records/mscoco_captions"], coco_features(),
                  config="2014", shards=2, fmt="array_record")
    cifar = open_split(tmp_path, "cifar10", "test")
    assert cifar.file_format == "array_record" and cifar.num_examples == 15
    got = list(cifar.examples(["image", "label", "id"], workers=2))
    for i, (ex, (png, label)) in enumerate(zip(got, written["cifar10"])):
        np.testing.assert_array_equal(ex["image"], decoded(png))
        assert ex["label"] == label and ex["id"] == f"test_{i}"
    coco = open_split(tmp_path, "coco_captions", "test", "2014")
    got = list(coco.examples(["image", "captions/text", "image/id"], limit=4))
    assert len(got) == 4
    for i, (ex, (jpg, caps)) in enumerate(zip(got, written["mscoco_captions"])):
        np.testing.assert_array_equal(ex["image"], decoded(jpg))
        assert ex["captions/text"] == caps and ex["image/id"] == -5 - i


def test_prepare_image_resizes_the_shorter_side_and_crops_the_centre():
    img = np.zeros((40, 80, 3), np.uint8)
    img[:, :20] = (255, 0, 0)
    img[:, 20:60] = (0, 255, 0)
    img[:, 60:] = (0, 0, 255)
    out = prepare_image(img, 32)  # → 32×64, columns 16..48: the green middle
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    assert tuple(out[16, 16]) == (0, 255, 0) and out[:, 4:28, 1].min() > 200
    np.testing.assert_allclose(prepare_image(img, 32) / 127.5 - 1, reference_prep(img), atol=1e-9)
    gray = prepare_image(np.full((32, 32, 1), 7, np.uint8), 32)
    assert gray.shape == (32, 32, 3) and gray.max() == 7


def test_metrics_match_brute_force(tfds_dir, noisy):
    d, written = tfds_dir
    emb, params = noisy
    ev = SuiteEvaluator(emb, "imagenet,imagenet_r,cifar10,coco", d, SIZE, workers=2, keep_embeddings=True)
    out = ev(params)
    for dataset in ("imagenet1k", "imagenet-r", "cifar10"):
        images = [decoded(png) for png, _ in written[dataset]]
        labels = [lab for _, lab in written[dataset]]
        names = clip_json("en_classnames.json")["imagenet1k"]
        if dataset == "imagenet-r":  # its 200 wnids (clip_benchmark's builder.py) among TFDS' 1000 labels
            keep = [i for i, w in enumerate(tfds_wnids()) if w in imagenet_r_wnids()]
            labels = [keep.index(lab) for lab in labels]
            names = [names[i] for i in keep]
        if dataset == "cifar10":
            names = CIFAR10
        img = reference_images(params, images)
        cls = expected_class_embeddings(params, dataset, names)
        np.testing.assert_allclose(ev.embeddings[dataset]["images"], img, atol=2e-5)
        np.testing.assert_allclose(ev.embeddings[dataset]["classes"], cls, atol=2e-5)
        want = brute_classification(img, cls, labels)
        for k, v in want.items():
            assert out[f"{dataset}/{k}"] == pytest.approx(v, abs=1e-12, nan_ok=True), (dataset, k)
    assert out["imagenet1k/acc1"] < 1 and out["cifar10/acc1"] < 1  # a noisy model: not trivially saturated
    assert len(imagenet_r_wnids()) == 200
    images = [decoded(jpg) for jpg, _ in written["mscoco_captions"]]
    texts = [c for _, caps in written["mscoco_captions"] for c in caps]
    owner = [i for i, (_, caps) in enumerate(written["mscoco_captions"]) for _ in caps]
    img, txt = reference_images(params, images), reference_texts(params, texts)
    np.testing.assert_array_equal(ev.embeddings["mscoco_captions"]["text_image"], owner)
    want = brute_retrieval(img, txt, owner)
    assert set(ev.results["mscoco_captions"]["metrics"]) == set(want)
    for k, v in want.items():
        assert out[f"mscoco_captions/{k}"] == pytest.approx(v, abs=1e-12), k
    assert 0 < out["mscoco_captions/image_retrieval_recall@1"] < 1
    # a second call reads the cached images and gives the same numbers
    assert ev(params) == pytest.approx(out, nan_ok=True)


def test_mock_data_array_record_path(tmp_path, noisy):
    emb, params = noisy
    with tfds.testing.mock_data(num_examples=30):
        ev = SuiteEvaluator(emb, "cifar10", tmp_path, SIZE, workers=2, keep_embeddings=True)
        assert ev.readers["cifar10"].file_format == "array_record" and ev.readers["cifar10"].num_examples == 30
        out = ev(params)
        source = tfds.data_source("cifar10", split="test", data_dir=str(tmp_path))
        images = [np.asarray(source[i]["image"]) for i in range(30)]
        labels = [int(source[i]["label"]) for i in range(30)]
        capped = SuiteEvaluator(emb, "cifar10", tmp_path, SIZE, max_items=7)
        capped(params)
    names = CIFAR10
    img = reference_images(params, images)
    np.testing.assert_array_equal(ev.embeddings["cifar10"]["labels"], labels)
    np.testing.assert_allclose(ev.embeddings["cifar10"]["images"], img, atol=2e-5)
    want = brute_classification(img, expected_class_embeddings(params, "cifar10", names), labels)
    assert {k: out[f"cifar10/{k}"] for k in want} == pytest.approx(want, abs=1e-12)
    assert len(capped._cache["cifar10"][0][1]) == 7


def test_planted_embeddings_score_100_percent(tfds_dir):
    """Image embedding = the text embedding of its class (or caption's image): every metric is 1."""
    d, _ = tfds_dir
    emb = Embedder(image_fn, text_fn, tokenize, batch_size=16)
    params = embedder_params(False)
    assert not np.any(np.asarray(params["w"])) and not np.any(np.asarray(params["tok"]))
    out = SuiteEvaluator(emb, "imagenet,imagenet_r,cifar10,coco", d, SIZE)(params)
    assert len(out) == 3 * 3 + 6 and all(v == 1.0 for v in out.values()), out


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tfds_dir, data_dir):
    """A few steps of the tiny two-tower emoji run, with the suite as an in-training evaluator."""
    from vlm_jax.config import apply_overrides, load_config
    from vlm_jax.train.trainer import finalize_config, train

    d, _ = tfds_dir
    workdir = tmp_path_factory.mktemp("suite") / "run"
    config = apply_overrides(finalize_config(load_config(str(ROOT / "experiments/emoji_two_tower.py:size=test"))), [
        "total_steps=2", "batch_size=16", "evals.sets=['emoji']", "evals.batch_size=1024", "checkpoint.every_steps=2",
        "mesh=[('data', 1)]",
        "progress=False", "evals.suite=imagenet,cifar10,coco", f"evals.suite_data_dir={d}"])
    out = train(config, workdir)
    return workdir, out


def test_in_training_evaluator_and_cli_write_clip_benchmark_json(trained_run, tfds_dir, tmp_path):
    workdir, out = trained_run
    d, _ = tfds_dir
    evals = out["evals"]
    assert {k for k in evals if k.startswith("suite/")} == {
        "suite/imagenet1k/acc1", "suite/imagenet1k/acc5", "suite/imagenet1k/mean_per_class_recall",
        "suite/cifar10/acc1", "suite/cifar10/acc5", "suite/cifar10/mean_per_class_recall",
        *(f"suite/mscoco_captions/{m}_retrieval_recall@{k}" for m in ("image", "text") for k in (1, 5, 10))}
    assert any(k.startswith("zeroshot/") for k in evals)  # beside the dataset's own evaluators
    cmd = [sys.executable, "-m", "vlm_jax.tools.evaluate", "--workdir", str(workdir), "--suite",
           "imagenet,cifar10,coco", "--data_dir", str(d), "--out", str(tmp_path / "bench")]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "| imagenet1k | zeroshot_classification | acc1 |" in res.stdout
    files = sorted(p.name for p in (tmp_path / "bench").iterdir())
    assert files == ["cifar10_step2_run_en_zeroshot_classification.json",
                     "imagenet1k_step2_run_en_zeroshot_classification.json",
                     "mscoco_captions_step2_run_en_zeroshot_retrieval.json"]
    for name in files:
        record = json.loads((tmp_path / "bench" / name).read_text())
        assert list(record) == ["dataset", "model", "pretrained", "task", "metrics", "language"]
        assert record["model"] == "run" and record["pretrained"] == "step2" and record["language"] == "en"
        assert name.startswith(record["dataset"]) and name.endswith(f"_{record['task']}.json")
        for metric, value in record["metrics"].items():  # the same checkpoint's numbers as in training
            assert value == pytest.approx(evals[f"suite/{record['dataset']}/{metric}"], abs=1e-6)
    assert list(json.loads((tmp_path / "bench" / files[2]).read_text())["metrics"]) == [
        f"{m}_retrieval_recall@{k}" for k in (1, 5, 10) for m in ("image", "text")]
    # bad input through the CLI's function: unknown names, a data dir without the dataset
    from vlm_jax.tools.evaluate import main
    with pytest.raises(SystemExit, match="unknown benchmark 'cifar11'; valid names"):
        main(["--workdir", str(workdir), "--suite", "cifar11"])
    with pytest.raises(SystemExit, match=re.escape(f"not prepared in {tmp_path}: looked for {tmp_path}/cifar100/")):
        main(["--workdir", str(workdir), "--suite", "cifar100", "--data_dir", str(tmp_path)])
