"""Composed scenes: on device, each batch image shrunk and pasted at a random place over a white canvas, on top of
a shrunk partner image from the same batch, with exact boxes (LocCa's referring and grounded-captioning tasks);
on the host, labelled two-object scenes for dense probes, and labelled scenes of several objects with exact boxes,
masks, counts, colours, sizes and relations and a caption that states them (`labelled_scene`; issue 33)."""
from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
WHITE = 1.0  # images are in [-1, 1]


def _paste(canvas: Array, patch: Array, top: Array, left: Array) -> Array:
    return jax.lax.dynamic_update_slice(canvas, patch, (top, left, jnp.int32(0)))


def shrink(images: Array, size: int) -> Array:
    """Images [B, S, S, C] at size × size: the mean of each k × k block when k = S / size is whole (an exact area
    filter, without matmuls), else an antialiased linear resize."""
    b, s, _, c = images.shape
    if s % size == 0:
        k = s // size
        return images.reshape(b, size, k, size, k, c).mean(axis=(2, 4))
    return jax.image.resize(images, (b, size, size, c), "linear", antialias=True)


def compose_scenes(rng: Array, images: Array, scale: float = 0.5,
                   rows: Array | None = None) -> tuple[Array, Array, Array]:
    """(scenes [R, S, S, C], boxes [R, 4] of each scene's own image as (top, left, bottom, right) / S, partner [R])
    for the batch rows `rows` (int [R]; None: every row). Scene i shows image rows[i] (on top, never occluded) and
    image partner[i] ≠ rows[i] of the whole batch, each resized to round(scale · S)."""
    canvas, pos, partner = compose_scene_layout(rng, images, scale, rows)
    s, size = images.shape[1], max(1, int(round(scale * images.shape[1])))
    own = pos[:, 0].astype(jnp.float32)
    return canvas, jnp.concatenate([own, own + size], axis=1) / s, partner


def compose_scene_layout(rng: Array, images: Array, scale: float = 0.5,
                         rows: Array | None = None) -> tuple[Array, Array, Array]:
    """`compose_scenes` with both objects' places: (scenes [R, S, S, C], top-left pixels int [R, 2 (own, partner),
    2 (top, left)] of the round(scale · S)-pixel objects, partner [R])."""
    b, s, _, c = images.shape
    rows = jnp.arange(b) if rows is None else jnp.asarray(rows, jnp.int32)
    r = rows.shape[0]
    size = max(1, int(round(scale * s)))
    k_partner, k_pos = jax.random.split(rng)
    partner = (rows + jax.random.randint(k_partner, (r,), 1, max(b, 2))) % b
    small = shrink(images, size)
    pos = jax.random.randint(k_pos, (r, 2, 2), 0, s - size + 1)  # [scene, object (own, partner), (top, left)]
    canvas = jnp.full((r, s, s, c), WHITE, images.dtype)
    canvas = jax.vmap(_paste)(canvas, small[partner], pos[:, 1, 0], pos[:, 1, 1])
    canvas = jax.vmap(_paste)(canvas, small[rows], pos[:, 0, 0], pos[:, 0, 1])
    return canvas, pos, partner


def box_patches(top_left: Array, side: int, patch: int, grid: int) -> Array:
    """Row-major indices int [R, (side/patch)²] of the patches of a grid × grid patch grid whose centres lie in the
    side × side pixel box at `top_left` int [R, 2]; `side` a multiple of `patch`, so every box holds that many."""
    n = side // patch
    first = -(-(2 * top_left - patch) // (2 * patch))  # the first i with (i + 1/2) · patch ≥ top, exactly in integers
    first = jnp.maximum(first, 0)
    rows = first[:, 0, None] + jnp.arange(n)[None, :]
    cols = first[:, 1, None] + jnp.arange(n)[None, :]
    return (rows[:, :, None] * grid + cols[:, None, :]).reshape(top_left.shape[0], n * n)


def scenes_with_labels(objects: np.ndarray, classes: np.ndarray, count: int, size: int, grid: tuple[int, int],
                       seed: int, scale: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Host scenes for dense probes: (images float32 [count, size, size, 3] in [-1, 1], labels int [count, gh, gw]).
    Each scene pastes two distinct drawings of `objects` (uint8 [M, h, w, 3]), resized to round(scale · size), at
    random places on white, the second on top; a patch's label is the class (1 + `classes[i]`) of the topmost
    drawing whose box holds the patch centre, else 0 (background)."""
    from vlm_jax.data import ops

    rng = np.random.default_rng(seed)
    side = max(1, int(round(scale * size)))
    small = np.stack([ops.normalize(ops.resize(im, side)) for im in objects])
    gh, gw = grid
    centres_y = (np.arange(gh) + 0.5) * size / gh
    centres_x = (np.arange(gw) + 0.5) * size / gw
    images = np.full((count, size, size, 3), WHITE, np.float32)
    labels = np.zeros((count, gh, gw), np.int64)
    for n in range(count):
        for i in rng.choice(len(objects), 2, replace=False):
            top, left = rng.integers(0, size - side + 1, 2)
            images[n, top:top + side, left:left + side] = small[i]
            inside = ((centres_y >= top) & (centres_y < top + side))[:, None] & \
                     ((centres_x >= left) & (centres_x < left + side))[None, :]
            labels[n][inside] = 1 + int(classes[i])
    return images, labels


# ---------------------------------------------------------------------------------------------------------- labelled
# Scenes with exact labels (issue 33): several objects on a white canvas, never overlapping, with each object's
# box, mask, colour and size, a count and a spatial relation, and a caption that states them.

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (230, 200, 30),
           "purple": (140, 60, 190)}  # an attribute recolours the drawing's ink to this hue, keeping its shading
SIZES = {"small": 0.25, "large": 0.4}  # an object's side as a share of the canvas side
RELATIONS = ("left of", "right of", "above", "below")
COUNT_WORDS = ("zero", "one", "two", "three", "four")
INK = 250  # a drawing's pixel is ink (part of its mask) when some channel is below this; others become white


@dataclass(frozen=True)
class LabelledScene:
    """One scene: image uint8 [S, S, 3]; per object (K of them): concept index, name, colour ("" none), size, box
    (top, left, bottom, right) in pixels, bottom/right exclusive, tight around its mask, mask bool [S, S]; the
    caption's subject concept (count copies) and object concept (one copy) and their relation."""
    image: np.ndarray
    concepts: tuple[int, ...]
    names: tuple[str, ...]
    colours: tuple[str, ...]
    sizes: tuple[str, ...]
    boxes: np.ndarray  # int [K, 4]
    masks: np.ndarray  # bool [K, S, S]
    subject: int
    count: int
    relation: str
    caption: str


IRREGULAR = {"man": "men", "woman": "women", "person": "people", "child": "children", "foot": "feet",
             "mouse": "mice", "tooth": "teeth", "goose": "geese", "leaf": "leaves", "knife": "knives"}


def plural(name: str) -> str:
    """English plural of a CLDR-style name: its head noun — the word before " with ", " of ", " in " or " on ",
    else the last word — in the plural (irregulars, -y → -ies, sibilants + es, else + s)."""
    for sep in (" with ", " of ", " in ", " on "):
        head, found, rest = name.partition(sep)
        if found and head:
            return plural(head) + found + rest
    *lead, word = name.split(" ")
    if word in IRREGULAR:
        word = IRREGULAR[word]
    elif word.endswith("y") and len(word) > 1 and word[-2] not in "aeiou":
        word = word[:-1] + "ies"
    elif word.endswith(("s", "x", "z", "ch", "sh")):
        word += "es"
    else:
        word += "s"
    return " ".join([*lead, word])


def recolour(drawing: np.ndarray, ink: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    """The drawing's ink pixels in `colour`, scaled by their darkness (shading kept); white elsewhere."""
    grey = drawing.astype(np.float32).mean(axis=-1, keepdims=True) / 255.0
    tinted = np.asarray(colour, np.float32) * (0.35 + 0.65 * grey)  # dark ink → a darker shade of the colour
    out = np.where(ink[..., None], np.clip(np.round(tinted), 0, INK - 1), 255)
    return out.astype(np.uint8)


def relation_of(a: np.ndarray, b: np.ndarray) -> str:
    """The relation of box a to box b (top, left, bottom, right) along the axis where their centres differ most."""
    dy = (a[0] + a[2]) - (b[0] + b[2])
    dx = (a[1] + a[3]) - (b[1] + b[3])
    if abs(dx) >= abs(dy):
        return "left of" if dx < 0 else "right of"
    return "above" if dy < 0 else "below"


def _object(drawing: np.ndarray, side: int, colour: str) -> tuple[np.ndarray, np.ndarray]:
    """(pixels uint8 [side, side, 3] with non-ink set to white, ink bool [side, side]) of one drawing."""
    from vlm_jax.data import ops

    small = np.asarray(ops.resize(drawing, side), np.uint8)
    ink = (small < INK).any(axis=-1)
    if colour:
        return recolour(small, ink, COLOURS[colour]), ink
    return np.where(ink[..., None], small, 255).astype(np.uint8), ink


def labelled_scene(drawings: np.ndarray, names: list[str], size: int, rng: np.random.Generator,
                   max_count: int = 3, distractors: int = 0, tries: int = 200) -> LabelledScene:
    """A scene of `count` (1 … max_count) copies of one concept, one copy of another (possibly recoloured) and
    `distractors` more objects, none overlapping (a pixel of white between boxes), such that every copy of the
    subject stands in the same relation to the object; caption "<count> <subject(s)> <relation> a [colour]
    <object>". drawings uint8 [M, h, w, 3] on white; names [M]."""
    m = len(drawings)
    for _ in range(tries):
        subject, obj = (int(i) for i in rng.choice(m, 2, replace=False))
        count = int(rng.integers(1, max_count + 1))
        colour = str(rng.choice(["", *COLOURS]))
        kinds = [(subject, "")] * count + [(obj, colour)]
        kinds += [(int(i), "") for i in rng.choice([i for i in range(m) if i not in (subject, obj)],
                                                   distractors, replace=False)]
        sizes = [str(rng.choice(list(SIZES))) for _ in kinds]
        sides = [max(2, int(round(SIZES[s] * size))) for s in sizes]
        places: list[tuple[int, int]] = []
        for side in sides:  # rejection: a place whose box keeps a pixel of white to every earlier box
            for _ in range(50):
                top, left = (int(v) for v in rng.integers(0, size - side + 1, 2))
                if all(top + side < t or t + s < top or left + side < l or l + s < left
                       for (t, l), s in zip(places, sides)):
                    places.append((top, left))
                    break
            else:
                break
        if len(places) < len(kinds):
            continue
        canvas = np.full((size, size, 3), 255, np.uint8)
        masks = np.zeros((len(kinds), size, size), bool)
        for k, ((concept, col), side, (top, left)) in enumerate(zip(kinds, sides, places)):
            pixels, ink = _object(drawings[concept], side, col)
            canvas[top:top + side, left:left + side][ink] = pixels[ink]
            masks[k, top:top + side, left:left + side] = ink
        if not masks.any(axis=(1, 2)).all():
            continue  # a drawing with no ink at this size
        boxes = np.stack([_tight_box(mk) for mk in masks])
        relations = {relation_of(boxes[k], boxes[count]) for k in range(count)}
        if len(relations) != 1:
            continue  # the copies disagree: the caption would be ambiguous
        relation = relations.pop()
        subject_words = names[subject] if count == 1 else plural(names[subject])
        article = "a " + (colour + " " if colour else "")
        caption = f"{COUNT_WORDS[count]} {subject_words} {relation} {article}{names[obj]}"
        return LabelledScene(canvas, tuple(c for c, _ in kinds), tuple(names[c] for c, _ in kinds),
                             tuple(c for _, c in kinds), tuple(sizes), boxes, masks, subject, count, relation,
                             caption)
    raise ValueError(f"no scene fits {max_count} + 1 + {distractors} objects on a {size}-pixel canvas in {tries} tries")


def _tight_box(mask: np.ndarray) -> np.ndarray:
    """(top, left, bottom, right) of a non-empty mask, bottom/right exclusive."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return np.asarray([rows[0], cols[0], rows[-1] + 1, cols[-1] + 1], np.int64)


def labelled_scenes(drawings: np.ndarray, names: list[str], count: int, size: int, seed: int,
                    **kw: int) -> list[LabelledScene]:
    """`count` scenes, deterministic by seed: scene i depends on (seed, i) alone, so any index is reproducible."""
    return [labelled_scene(drawings, names, size, np.random.default_rng([seed, i]), **kw) for i in range(count)]
