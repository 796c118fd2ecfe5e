"""Tux Paint stamps dataset: parsing against the raw files, split, images, train stream, evaluation sets.

Uses the prepared dataset in the real data cache ($VLM_JAX_DATA_DIR), built once and reused by later runs.
"""
import collections
import json
import os
import re
import unicodedata
import zlib

import ml_collections
import numpy as np
import pytest
from PIL import Image

from vlm_jax.data import image_text, ops, robust, tuxpaint
from vlm_jax.evals.embedder import Embedder
from vlm_jax.data.tokenizer import PAD_ID

MEASURED_DEB = "tuxpaint-stamps-default_2022.06.04-1_all.deb"


@pytest.fixture(scope="module")
def tux_dir():
    d = os.environ["VLM_JAX_DATA_DIR"]
    tuxpaint.prepare(d)
    return d


@pytest.fixture(scope="module")
def root(tux_dir):
    return tuxpaint.fetch(tux_dir)


@pytest.fixture(scope="module")
def splits(tux_dir):
    return {s: tuxpaint.load_split(tux_dir, s) for s in tuxpaint.SPLITS}


@pytest.fixture(scope="module")
def data(tux_dir):
    cfg = ml_collections.ConfigDict(dict(name="tuxpaint", data_dir=tux_dir, image_size=32, text_len=32,
                                         num_threads=1, augment=dict(crop=dict(scale=(0.6, 1.0)), flip=0.5)))
    return image_text.get(cfg)


def _all(splits):
    """Every prepared stamp as {path: (split, index in split)}."""
    return {p: (s, i) for s in tuxpaint.SPLITS for i, p in enumerate(splits[s]["path"])}


def _raw(root, path):
    """Caption and translations read straight from a stamp's .txt (independent of the module's parser)."""
    lines = (root / f"{path}.txt").read_text(encoding="utf-8").splitlines()
    trans = {}
    for line in lines[1:]:
        key, sep, value = line.partition(".utf8=")
        if sep:
            trans[key] = value
    return lines[0], trans


def _norm(text):
    """What the tokenizer's normalisation (nmt_nfkc_cf) gives back: NFKC, lower case, single spaces."""
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text)).strip().lower()


# ---- raw files -------------------------------------------------------------------------------------------------

def test_captions_and_translations_match_raw_files(root, splits):
    stamps = _all(splits)
    paths = sorted(stamps)
    chosen = [paths[i] for i in (0, 137, 421, 700, len(paths) - 1)]
    if "symbols/money/us/coins/001penny" in stamps:
        chosen.append("symbols/money/us/coins/001penny")
    for path in chosen:
        split, i = stamps[path]
        caption, trans = _raw(root, path)
        assert splits[split]["caption"][i] == caption.strip()
        assert splits[split]["category"][i] == path.split("/")[0]
        assert splits[split]["translations"][i] == {k: v.strip() for k, v in trans.items() if v.strip()}
        for lang in ("de", "fr", "ja"):
            if lang in trans:
                assert splits[split]["translations"][i][lang] == trans[lang].strip()
    if "symbols/money/us/coins/001penny" in stamps:
        split, i = stamps["symbols/money/us/coins/001penny"]
        assert splits[split]["caption"][i] == "A US 1 cent piece ($.01) called a penny."
        assert splits[split]["translations"][i]["ru"] == "1 цент США («пенни»)"


def test_parse_description_edge_cases():
    text = "\ufeffA red ball.\r\n\r\nde.utf8=Ein roter Ball.\r\nfr.utf8=  \r\njunk line\nsr@latin.utf8=Crvena lopta.\n"
    assert tuxpaint.parse_description(text) == ("A red ball.", {"de": "Ein roter Ball.", "sr@latin": "Crvena lopta."})
    assert tuxpaint.parse_description("de.utf8=Nur Deutsch.\n") == (None, {})
    assert tuxpaint.parse_description("\n  \n") == (None, {})


def test_scan_counts(tux_dir, root, splits):
    stamps, skipped = tuxpaint.scan(root)
    assert sorted(s.path for s in stamps) == sorted(_all(splits))  # every scanned stamp rendered and prepared
    meta = dict(tuxpaint.builder(tux_dir).info.metadata)
    assert meta["skipped"] == dict(skipped)
    assert sum(meta["pictures"].values()) == len(stamps)
    if meta["deb"] == MEASURED_DEB:  # the numbers in the module docstring
        assert len(stamps) == 950 and meta["pictures"] == {"png": 785, "svg": 165}
        assert dict(skipped) == {"no_picture": 2, "variant": 11}
        assert len({s.category for s in stamps}) == 16
        assert (len(splits["train"]["id"]), len(splits["test"]["id"])) == (856, 94)


def test_fetch_error_names_the_command(tmp_path, monkeypatch):
    """Without a .deb and with a failing apt-get, fetch says what to run."""
    stub = tmp_path / "bin"
    stub.mkdir()
    (stub / "apt-get").write_text("#!/bin/sh\necho 'E: Unable to locate package' >&2\nexit 100\n")
    (stub / "apt-get").chmod(0o755)
    monkeypatch.setenv("PATH", f"{stub}:{os.environ['PATH']}")
    with pytest.raises(FileNotFoundError, match=r"apt-get download tuxpaint-stamps-default.*Unable to locate"):
        tuxpaint.fetch(tmp_path / "data")


# ---- split -----------------------------------------------------------------------------------------------------

def test_split(root, splits):
    train, test = splits["train"], splits["test"]
    assert not set(train["path"]) & set(test["path"])
    ids = np.concatenate([train["id"], test["id"]])
    np.testing.assert_array_equal(np.sort(ids), np.arange(len(ids)))  # ids: 0..N-1 over both splits
    cats, test_cats = np.array(train["category"] + test["category"]), set(test["category"])
    for c in set(cats):
        if (cats == c).sum() >= 10:
            assert c in test_cats, c
    assert 0.08 <= len(test["id"]) / len(ids) <= 0.12
    train_caps = {c.casefold() for c in train["caption"]}
    assert not train_caps & {c.casefold() for c in test["caption"]}
    assert len({c.casefold() for c in test["caption"]}) == len(test["caption"])  # no ties in retrieval
    # the split is a function of the stamps and the seed
    stamps, _ = tuxpaint.scan(root)
    assert tuxpaint.split_stamps(stamps) == tuxpaint.split_stamps(list(reversed(stamps))) == set(test["path"])
    assert tuxpaint.split_stamps(stamps, seed=1) != set(test["path"])


def test_second_prepare_is_identical(tux_dir, splits, tmp_path):
    """A fresh build (reusing the downloaded and unpacked package) gives the same splits, images and tokenizer."""
    for sub in ("debs", "tuxpaint"):
        (tmp_path / sub).symlink_to(os.path.abspath(os.path.join(tux_dir, sub)))
    tuxpaint.prepare(tmp_path)
    for s in tuxpaint.SPLITS:
        again = tuxpaint.load_split(tmp_path, s)
        for k in ("path", "caption", "category", "translations"):
            assert again[k] == splits[s][k]
        np.testing.assert_array_equal(again["id"], splits[s]["id"])
        np.testing.assert_array_equal(again["image"], splits[s]["image"])
    assert tuxpaint.tokenizer_path(tmp_path).read_bytes() == tuxpaint.tokenizer_path(tux_dir).read_bytes()


# ---- images ----------------------------------------------------------------------------------------------------

def _independent_render(path, size=64, margin=0.04):
    """Composite on white, crop to the alpha bbox, centre on a white square with a margin, BOX-resize."""
    rgba = Image.open(path).convert("RGBA")
    flat = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    box = rgba.getchannel("A").getbbox()
    flat = flat.crop(box)
    w, h = flat.size
    side = max(w, h) + 2 * int(round(margin * max(w, h)))
    square = Image.new("RGB", (side, side), (255, 255, 255))
    square.paste(flat, ((side - w) // 2, (side - h) // 2))
    return np.asarray(square.resize((size, size), Image.Resampling.BOX)).astype(int)


def test_png_images_match_an_independent_render(root, splits):
    stamps = _all(splits)
    modes = {}
    for path in sorted(stamps):
        f = root / f"{path}.png"
        if f.exists():
            modes.setdefault(Image.open(f).mode, path)  # one stamp per PNG mode (RGBA, LA, P, RGB)
    assert len(modes) >= 3
    for path in modes.values():
        split, i = stamps[path]
        got = splits[split]["image"][i].astype(int)
        assert got.shape == (64, 64, 3)
        assert np.abs(got - _independent_render(root / f"{path}.png")).max() <= 1, path
        assert got.min() < 200  # something is drawn


def test_svg_rasterised_like_its_png(root, splits):
    """An SVG with a PNG twin rasterises to (nearly) the same picture; SVG-only stamps are drawn, not blank."""
    from vlm_jax.data.emoji import to_square_rgb

    stamps = _all(splits)
    twins = [root / f"{p}.svg" for p in sorted(stamps) if (root / f"{p}.svg").exists()
             and (root / f"{p}.png").exists() and b"<text" not in (root / f"{p}.svg").read_bytes()]
    assert len(twins) >= 5
    for svg in twins[:: len(twins) // 5][:5]:
        a = to_square_rgb(tuxpaint.load_rgba(svg), 64).astype(float)
        b = to_square_rgb(tuxpaint.load_rgba(svg.with_suffix(".png")), 64).astype(float)
        assert np.abs(a - b).mean() < 15, svg  # all 76 such twins: 0.07-12.5, median 2.5 (of 255)
    svg_only = [p for p in sorted(stamps) if not (root / f"{p}.png").exists()]
    assert svg_only
    for path in svg_only[:: max(1, len(svg_only) // 10)]:
        split, i = stamps[path]
        assert (splits[split]["image"][i] < 200).any(axis=-1).mean() > 0.02, path


# ---- training stream -------------------------------------------------------------------------------------------

def test_train_batches(data, splits):
    it = iter(data.train(batch_size=8, seed=0, process_index=0, process_count=1))
    x = next(it)
    assert x["image"].shape == (8, 32, 32, 3) and x["image"].dtype == np.float32
    assert -1 <= x["image"].min() and x["image"].max() <= 1
    assert x["text"].shape == (8, 32) and x["text"].dtype == np.int32 and data.text_spec(8) == ((8, 32), np.int32)
    assert x["concept"].shape == (8,) and x["concept"].dtype == np.int32
    captions = dict(zip(splits["train"]["id"].tolist(), splits["train"]["caption"]))
    assert set(x["concept"].tolist()) <= set(captions)  # training draws train stamps only
    whole = x["text"][:, -1] == PAD_ID
    assert whole.sum() >= 4
    for cid, text, w in zip(x["concept"], data.decode(x["text"]), whole):
        if w:
            assert text == _norm(captions[int(cid)])
    ids = data.special_ids
    assert ids["bos"] == data.vocab_size and ids["vocab"] == data.vocab_size + 2 and ids["pad"] == PAD_ID


def test_train_resume(data):
    def stream():
        return iter(data.train(batch_size=8, seed=3, process_index=0, process_count=1))

    it = stream()
    for _ in range(3):
        next(it)
    state = it.get_state()
    want = [next(it) for _ in range(2)]
    it2 = stream()
    it2.set_state(state)
    for u, v in zip(want, [next(it2) for _ in range(2)]):
        assert robust.pop_counts(u) == robust.pop_counts(v)  # the bad-data counters resume too
        assert all(np.array_equal(u[k], v[k]) for k in u)
    assert not np.array_equal(want[0]["concept"], want[1]["concept"])


def test_stamps_sharing_a_caption_share_a_concept(tux_dir, root, splits):
    """One epoch of the train stream: the caption the model reads → concept id is a function and one-to-one, so
    stamps with the same caption are never each other's negatives; the merges counted from the raw .txt files."""
    cfg = ml_collections.ConfigDict(dict(name="tuxpaint", data_dir=tux_dir, image_size=8, text_len=64, num_threads=0))
    data = image_text.get(cfg)
    n = len(splits["train"]["path"])
    epoch = next(iter(data.train(batch_size=n, seed=0, process_index=0, process_count=1)))  # each stamp once
    assert epoch["concept"].dtype == np.int32
    concept_of: dict[str, set[int]] = {}
    for text, concept in zip(data.decode(epoch["text"]), epoch["concept"].tolist()):
        concept_of.setdefault(text, set()).add(concept)
    assert [t for t, c in concept_of.items() if len(c) > 1] == []  # a function of the caption …
    assert len(set.union(*concept_of.values())) == len(concept_of)  # … and different captions differ
    raw = collections.Counter(_raw(root, p)[0].strip().casefold() for p in splits["train"]["path"])
    assert len(concept_of) == len(raw)
    merged = sum(k for k in raw.values() if k > 1)  # stamps whose caption another stamp has
    sizes = collections.Counter(epoch["concept"].tolist())
    assert sum(1 for c in epoch["concept"].tolist() if sizes[c] > 1) == merged
    if dict(tuxpaint.builder(tux_dir).info.metadata)["deb"] == MEASURED_DEB:
        assert (merged, len(raw), n) == (278, 680, 856)  # the module docstring's numbers


def test_cut_captions_are_counted(tux_dir, splits):
    """One epoch at text_len 8: the stream's truncation counter equals the captions with more than 7 pieces."""
    cfg = ml_collections.ConfigDict(dict(name="tuxpaint", data_dir=tux_dir, image_size=8, text_len=8, num_threads=0))
    data = image_text.get(cfg)
    captions = splits["train"]["caption"]
    epoch = dict(next(iter(data.train(batch_size=len(captions), seed=0, process_index=0, process_count=1))))
    want = sum(len(ids) > 7 for ids in data.tokenizer.sp.encode(captions))
    assert want > 50 and robust.pop_counts(epoch)["data/truncated/text"] == want


def test_caption_languages(tux_dir, splits):
    cfg = ml_collections.ConfigDict(dict(name="tuxpaint", data_dir=tux_dir, image_size=16, text_len=64,
                                         num_threads=1, languages=("de",)))
    data = image_text.get(cfg)
    x = next(iter(data.train(batch_size=8, seed=0, process_index=0, process_count=1)))
    train = splits["train"]
    german = {i: t.get("de") or c for i, t, c in zip(train["id"].tolist(), train["translations"], train["caption"])}
    for cid, text, w in zip(x["concept"], data.decode(x["text"]), x["text"][:, -1] == PAD_ID):
        if w:
            assert text == _norm(german[int(cid)])
    with pytest.raises(ValueError, match="languages"):
        image_text.get(ml_collections.ConfigDict(dict(name="tuxpaint", data_dir=tux_dir, languages=("xx",))))
    with pytest.raises(Exception, match="data.colour"):
        image_text.get(ml_collections.ConfigDict(dict(name="tuxpaint", data_dir=tux_dir, colour=1)))


def test_bad_examples_are_marked(data):
    pre = tuxpaint.dataset._Preprocess(data.tokenizer, 16, 8, {})
    rng = np.random.default_rng(0)
    good = {"image": tuxpaint.build.png(np.full((64, 64, 3), 255, np.uint8)), "caption": b"A ball.",
            "translations": b"{}", "id": 5}
    assert pre.random_map(good, rng)["concept"] == 5
    assert pre.random_map({**good, "image": b"not a png"}, rng) == {robust.BAD: "image"}
    assert pre.random_map({**good, "caption": b"\xff\xfe"}, rng) == {robust.BAD: "caption"}
    assert pre.random_map({**good, "caption": b"  "}, rng) == {robust.BAD: "caption"}


# ---- evaluation ------------------------------------------------------------------------------------------------

def test_eval_sets(data, splits):
    sets = data.eval_sets(["tuxpaint"])
    assert list(sets) == ["tuxpaint/test"]
    ev, test, train = sets["tuxpaint/test"], splits["test"], splits["train"]
    n, m = len(test["caption"]), len(train["caption"])
    assert ev.images.shape == (n, 32, 32, 3) and ev.images.dtype == np.float32
    assert -1 <= ev.images.min() and ev.images.max() <= 1
    np.testing.assert_allclose(ev.images[0], ops.normalize(ops.resize(test["image"][0], 32)), atol=1e-6)
    np.testing.assert_array_equal(ev.labels, np.arange(n))
    assert ev.class_names == test["caption"] and ev.class_images is None and ev.retrieval
    assert ev.references == [[c] for c in test["caption"]]
    assert ev.pixel_images.shape == (n, 16, 16, 3)
    assert ev.caption_pool_pixels.shape == (m, 16, 16, 3) and ev.caption_pool_texts == train["caption"]
    assert "symbols" in ev.subsets and ev.subsets["symbols"].sum() == test["category"].count("symbols")
    with pytest.raises(ValueError, match="emoji"):
        data.eval_sets(["emoji"])


class _PixelEmbedder(Embedder):
    """Images → their pixels; texts → a fixed random vector per text (enough to run the evaluator); prompt
    ensembling and scoring are the base Embedder's."""

    def __init__(self):
        pass

    def images(self, params, images):
        return images.reshape(len(images), -1)[:, :64]

    def texts(self, params, texts):
        return np.stack([np.random.default_rng(zlib.crc32(t.encode())).normal(size=64) for t in texts])


def test_evaluators(data, splits):
    cfg = ml_collections.ConfigDict(dict(sets=["tuxpaint"], languages=["de"]))
    ev = data.evaluators(_PixelEmbedder(), cfg)["zeroshot"]
    assert sorted(ev.sets) == ["tuxpaint/test", "tuxpaint/test/de"]
    assert ev.templates == ["{}"]
    de = [t.get("de") or c for t, c in zip(splits["test"]["translations"], splits["test"]["caption"])]
    assert ev.sets["tuxpaint/test/de"].class_names == de
    out = ev(None)
    n = float(len(splits["test"]["caption"]))
    assert out["tuxpaint/test/num_queries"] == n == out["tuxpaint/test/num_classes"]
    assert out["tuxpaint/test/all/top@1/chance"] == pytest.approx(1 / n)
    assert 0 <= out["tuxpaint/test/all/i2t_R@5/model"] <= 1
    assert "tuxpaint/test/all/top@1/pixel" not in out  # no class images: no pixel classifier baseline


def test_translations_json_is_stored(tux_dir):
    src = tuxpaint.data_source(tux_dir, "train", encoded_images=True)
    ex = src[0]
    assert isinstance(ex["image"], bytes) and ex["image"][:4] == b"\x89PNG"
    assert isinstance(json.loads(ex["translations"]), dict)
