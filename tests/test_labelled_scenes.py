"""Issue 33's scene generator (`data.scenes.labelled_scene`) on the package's emoji drawings: the masks and boxes
agree with the rendered pixels exactly, the count, colour, size and relation the caption states hold in the
pixels, and scenes are reproducible by (seed, index)."""
from __future__ import annotations

import math

import numpy as np
import pytest


@pytest.fixture(scope="module")
def scenes_and_drawings(data_dir):
    from vlm_jax.data import emoji_tfds, scenes
    from vlm_jax.data.image_text import PREPARED_SIZE

    split = emoji_tfds.load_split(data_dir, "noto", PREPARED_SIZE)
    keep = np.flatnonzero(~np.asarray(split["is_flag"], bool))[:200]
    drawings = np.asarray(split["image"])[keep]
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in np.asarray(split["name"])[keep]]
    return scenes.labelled_scenes(drawings, names, 40, 64, seed=3, distractors=1), drawings, names


def _brute_box(mask):
    """(top, left, bottom, right) by visiting every pixel."""
    top = left = 10 ** 9
    bottom = right = -1
    for y in range(mask.shape[0]):
        for x in range(mask.shape[1]):
            if mask[y, x]:
                top, left, bottom, right = min(top, y), min(left, x), max(bottom, y + 1), max(right, x + 1)
    return [top, left, bottom, right]


def test_masks_and_boxes_are_the_rendered_pixels(scenes_and_drawings):
    from vlm_jax.data.scenes import SIZES

    scenes, _, _ = scenes_and_drawings
    for s in scenes:
        non_white = (s.image != 255).any(axis=-1)
        np.testing.assert_array_equal(s.masks.any(axis=0), non_white)  # ink exactly where some object is
        assert s.masks.sum(axis=0).max() == 1  # no pixel belongs to two objects
        for k, mask in enumerate(s.masks):
            assert s.boxes[k].tolist() == _brute_box(mask)
            t, l, b, r = s.boxes[k]
            assert max(b - t, r - l) <= round(SIZES[s.sizes[k]] * 64)  # the size attribute bounds the object
            if k:  # a pixel of white between the boxes of any two objects
                for j in range(k):
                    u = s.boxes[j]
                    assert b < u[0] or u[2] < t or r < u[1] or u[3] < l, (k, j)


def test_captions_state_what_the_pixels_show(scenes_and_drawings):
    from vlm_jax.data.scenes import COLOURS, COUNT_WORDS, plural

    scenes, _, names = scenes_and_drawings
    assert len({s.count for s in scenes}) == 3 and len({s.relation for s in scenes}) == 4
    for s in scenes:
        subject, count = s.subject, s.count
        copies = [k for k, c in enumerate(s.concepts) if c == subject]
        assert len(copies) == count and s.concepts[count] != subject
        name = names[subject] if count == 1 else plural(names[subject])
        colour = s.colours[count]
        obj = f"a {colour} {names[s.concepts[count]]}" if colour else f"a {names[s.concepts[count]]}"
        assert s.caption == f"{COUNT_WORDS[count]} {name} {s.relation} {obj}"
        oy, ox = [(s.boxes[count][i] + s.boxes[count][i + 2]) / 2 for i in (0, 1)]
        for k in copies:  # the relation: the direction from the object to each copy within 45° of the axis
            sy, sx = [(s.boxes[k][i] + s.boxes[k][i + 2]) / 2 for i in (0, 1)]
            angle = math.degrees(math.atan2(-(sy - oy), sx - ox))  # 0: right, 90: up (image rows grow downwards)
            want = {"right of": (-45, 45), "above": (45, 135), "left of": (135, 225), "below": (-135, -45)}
            lo, hi = want[s.relation]
            assert lo <= angle <= hi or lo <= angle + 360 <= hi, (s.caption, angle)
        if colour:  # the recoloured object's ink leans to its colour's strongest channel
            ink = s.image[s.masks[count]].astype(np.float64).mean(axis=0)
            assert int(np.argmax(ink)) == int(np.argmax(COLOURS[colour])), (colour, ink)


def test_scenes_are_reproducible_by_seed_and_index(scenes_and_drawings):
    from vlm_jax.data.scenes import labelled_scene, labelled_scenes

    scenes, drawings, names = scenes_and_drawings
    again = labelled_scene(drawings, names, 64, np.random.default_rng([3, 7]), distractors=1)
    np.testing.assert_array_equal(again.image, scenes[7].image)
    assert again.caption == scenes[7].caption
    other = labelled_scenes(drawings, names, 8, 64, seed=4, distractors=1)
    assert any(not np.array_equal(a.image, b.image) for a, b in zip(other, scenes))


def test_plural_of_cldr_names():
    from vlm_jax.data.scenes import plural

    assert [plural(n) for n in ("cat", "face with tears of joy", "baby", "fox", "man in suit levitating", "key",
                                "peach", "bus")] == ["cats", "faces with tears of joy", "babies", "foxes",
                                                     "men in suit levitating", "keys", "peaches", "buses"]


def test_probe_foils_differ_in_one_respect_and_an_oracle_gets_them_all(scenes_and_drawings):
    """Every foil changes only its kind's words; a scorer that checks each caption against the scene's pixels
    (counts of masks, centres of boxes) gets 100% on every kind, and a bag-of-words scorer exactly 50% on word
    order."""
    from vlm_jax.data.scenes import COLOURS, plural
    from vlm_jax.evals.compositional import probe_accuracy, probe_items

    COLOURS_ = tuple(COLOURS)
    scenes, _, names = scenes_and_drawings
    items = probe_items(scenes, names)
    assert {it.kind for it in items} == {"count", "relation", "attribute", "word_order"}
    for it in items:
        t, f = it.true.split(" "), it.foil.split(" ")
        assert it.true == scenes[it.scene].caption and it.true != it.foil
        if it.kind == "word_order":
            assert sorted(t) == sorted(f)
        elif it.kind == "relation":
            assert len(t) == len(f) and sum(a != b for a, b in zip(t, f)) in (1, 2)  # "above"/"left of"
        elif it.kind == "attribute":
            assert sorted(t) == sorted(f)

    def holds(scene, caption):
        """1 when some reading "<count> [colour] <name(s)> <relation> a [colour] <name>" of the caption is true of
        the scene's masks (counted) and boxes (their centres), else 0."""
        centre = lambda k: ((scene.boxes[k][0] + scene.boxes[k][2]) / 2,  # noqa: E731
                            (scene.boxes[k][1] + scene.boxes[k][3]) / 2)
        present = {names[c]: [k for k, d in enumerate(scene.concepts) if d == c] for c in set(scene.concepts)}
        for rel in ("left of", "right of", "above", "below"):
            for at in [i for i in range(len(caption)) if caption.startswith(f" {rel} ", i)]:
                left, right = caption[:at].split(" "), caption[at + len(rel) + 2:]
                if left[0] not in ("one", "two", "three"):
                    continue
                n = ("one", "two", "three").index(left[0]) + 1
                for colour in ("", *COLOURS_):
                    words = left[1:]
                    if colour and words[0] != colour:
                        continue
                    phrase = " ".join(words[1:] if colour else words)
                    for name, copies in present.items():
                        if phrase != (name if n == 1 else plural(name)) or len(copies) != n:
                            continue
                        if any(scene.colours[k] != colour for k in copies):
                            continue
                        for other, (k2, *more) in present.items():
                            want = " ".join(w for w in ("a", scene.colours[k2], other) if w)
                            if more or other == name or right != want:
                                continue
                            ty, tx = centre(k2)
                            ok = True
                            for k in copies:
                                sy, sx = centre(k)
                                dy, dx = sy - ty, sx - tx
                                ok &= {"left of": dx < 0 and abs(dx) >= abs(dy), "right of": dx > 0 and abs(dx) >= abs(dy),
                                       "above": dy < 0 and abs(dy) > abs(dx), "below": dy > 0 and abs(dy) > abs(dx)}[rel]
                            if ok:
                                return 1.0
        return 0.0

    true = np.asarray([holds(scenes[it.scene], it.true) for it in items])
    foil = np.asarray([holds(scenes[it.scene], it.foil) for it in items])
    assert true.all()
    acc = probe_accuracy(items, true, foil)
    assert all(acc[k] == 1.0 for k in ("count", "relation", "attribute", "word_order", "all")), acc
    bag = lambda c: float(sum(hash(w) % 1000 for w in c.split(" ")))  # noqa: E731  order-blind
    words = probe_accuracy(items, np.asarray([bag(it.true) for it in items]), np.asarray([bag(it.foil) for it in items]))
    assert words["word_order"] == 0.5 and words["attribute"] == 0.5


def test_scene_stream_is_exactly_resumable_and_captions_scenes(data_dir):
    """Data "scenes": the same seed gives the same batches; an iterator restored from a saved state continues
    with the batch the original gives next; every caption has the scene form."""
    import re

    from vlm_jax.data.base import get

    data = get(_config(data_dir))
    first = iter(data.train(8, 0, 0, 1))
    for _ in range(2):
        next(first)
    state = first.get_state()
    want = next(first)
    resumed = iter(data.train(8, 0, 0, 1))
    resumed.set_state(state)
    got = next(resumed)
    for key in ("image", "text"):
        np.testing.assert_array_equal(got[key], want[key])
    again = next(iter(data.train(8, 0, 0, 1)))
    other = next(iter(data.train(8, 1, 0, 1)))
    assert not np.array_equal(again["image"], other["image"])
    form = re.compile(r"^(one|two|three) .+ (left of|right of|above|below) a .+$")
    assert all(form.match(c) for c in data.decode(want["text"])), data.decode(want["text"])
    assert want["image"].shape == (8, 32, 32, 3) and want["image"].min() >= -1 and want["image"].max() <= 1


def _config(data_dir):
    import ml_collections

    return ml_collections.ConfigDict(dict(name="scenes", data_dir=data_dir, eval_scenes=16, num_threads=1))


def test_scene_training_reports_probes_that_match_the_run(data_dir, tmp_path):
    """train() on data "scenes" (CLIP, test size): the probe metrics it logs equal a float64 recomputation from the
    loaded run's embeddings of the held-out scenes and the probe captions; retrieval is reported beside them."""
    import json

    import vlm_jax
    from vlm_jax.config import apply_overrides, load_config
    from vlm_jax.evals.compositional import probe_items
    from vlm_jax.train.trainer import finalize_config, train

    config = apply_overrides(finalize_config(load_config("experiments/scenes_two_tower.py:size=test,steps=3,batch=16")),
                             ["mesh=[('data', 1)]", "progress=False", "checkpoint.async_save=False"])
    out = train(config, tmp_path / "run")
    evals = json.loads((tmp_path / "run" / "results.json").read_text())["evals"]
    scenes, names = out["setup"].objective.data.held_out
    items = probe_items(scenes, names)
    run = vlm_jax.load(tmp_path / "run")
    img = run.embed_images(np.stack([scenes[it.scene].image for it in items])).astype(np.float64)
    cos = lambda texts: np.sum(img * run.embed_texts(texts).astype(np.float64), axis=1)  # noqa: E731
    wins = cos([it.true for it in items]) > cos([it.foil for it in items])
    for kind in ("count", "relation", "word_order", "all"):
        pick = [i for i, it in enumerate(items) if kind in ("all", it.kind)]
        assert evals[f"probes/scenes/{kind}"] == pytest.approx(np.mean(wins[pick]), abs=1e-12), kind
    assert "zeroshot/scenes/test/all/i2t_R@1/model" in evals
