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
