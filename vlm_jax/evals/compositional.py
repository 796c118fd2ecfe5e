"""Probes for what VLMs get wrong (issue 33, part 5): each labelled scene's true caption against a foil that
differs in one respect — the count, the relation (left ↔ right, above ↔ below), which object carries the colour
(attribute binding), or the order of the two noun phrases around the same relation (word order, Winoground-style)
— scored by any trained run. Accuracy is the share of items where the true caption scores higher (ties count half);
chance is 0.5."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from vlm_jax.data.scenes import COUNT_WORDS, LabelledScene, plural

KINDS = ("count", "relation", "attribute", "word_order")
OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
Scorer = Callable[[np.ndarray, Sequence[str]], np.ndarray]  # (images uint8 [N, S, S, 3], texts [N]) → scores [N]


@dataclass(frozen=True)
class ProbeItem:
    """One image with its true caption and a foil of one kind."""
    scene: int
    kind: str
    true: str
    foil: str


def _phrase(scene: LabelledScene, names: Sequence[str], count: int | None = None, subject_colour: str = "",
            object_colour: str | None = None) -> tuple[str, str]:
    """(subject phrase, object phrase) of a scene's caption: "<count> [colour] <subject(s)>", "a [colour] <object>"."""
    count = scene.count if count is None else count
    name = names[scene.subject]
    subject = " ".join(w for w in (COUNT_WORDS[count], subject_colour, name if count == 1 else plural(name)) if w)
    colour = scene.colours[scene.count] if object_colour is None else object_colour
    obj = " ".join(w for w in ("a", colour, names[scene.concepts[scene.count]]) if w)
    return subject, obj


def probe_items(scenes: Sequence[LabelledScene], names: Sequence[str], max_count: int = 3) -> list[ProbeItem]:
    """Every applicable foil of every scene: count (the next count up, wrapping within 1 … max_count), relation,
    attribute (scenes with a coloured object: the colour moved to the subject) and word order (the two phrases
    swapped around the same relation word)."""
    items = []
    for i, s in enumerate(scenes):
        subject, obj = _phrase(s, names)
        true = f"{subject} {s.relation} {obj}"
        if true != s.caption:
            raise ValueError(f"scene {i}: its caption {s.caption!r} is not the probe's form {true!r}")
        other = _phrase(s, names, count=s.count % max_count + 1)[0]
        items.append(ProbeItem(i, "count", true, f"{other} {s.relation} {obj}"))
        items.append(ProbeItem(i, "relation", true, f"{subject} {OPPOSITE[s.relation]} {obj}"))
        colour = s.colours[s.count]
        if colour:
            moved, plain = _phrase(s, names, subject_colour=colour, object_colour="")
            items.append(ProbeItem(i, "attribute", true, f"{moved} {s.relation} {plain}"))
        items.append(ProbeItem(i, "word_order", true, f"{obj} {s.relation} {subject}"))
    return items


def probe_accuracy(items: Sequence[ProbeItem], true_scores: np.ndarray, foil_scores: np.ndarray) -> dict[str, float]:
    """{kind: accuracy, kind/items: count} and "all" over every item: true > foil counts 1, a tie 1/2."""
    wins = (np.asarray(true_scores) > np.asarray(foil_scores)) + 0.5 * (np.asarray(true_scores) == np.asarray(foil_scores))
    kinds = np.asarray([it.kind for it in items])
    out: dict[str, float] = {}
    for kind in (*KINDS, "all"):
        pick = np.ones(len(items), bool) if kind == "all" else kinds == kind
        if pick.any():
            out[kind] = float(np.mean(wins[pick]))
            out[f"{kind}/items"] = float(pick.sum())
    return out


def run_probes(scenes: Sequence[LabelledScene], names: Sequence[str], score: Scorer,
               max_count: int = 3) -> tuple[dict[str, float], list[ProbeItem]]:
    """(accuracies by kind, the items) of a scorer on the scenes' probe items."""
    items = probe_items(scenes, names, max_count)
    images = np.stack([scenes[it.scene].image for it in items])
    true = np.asarray(score(images, [it.true for it in items]), np.float64)
    foil = np.asarray(score(images, [it.foil for it in items]), np.float64)
    return probe_accuracy(items, true, foil), items


class ProbeEvaluator:
    """The probes as a training-time evaluator of an embedding objective: each pair scored by the objective's own
    image→text similarity (`Embedder.similarity`: the cosine, FILIP's token-wise score, Llip's pooled one);
    metrics "scenes/<kind>" and "scenes/<kind>/items"."""

    def __init__(self, embedder: Any, scenes: Sequence[LabelledScene], names: Sequence[str], image_size: int,
                 max_count: int = 3, block: int = 256):
        from vlm_jax.data.base import prep_images

        self.embedder, self.items, self.block = embedder, probe_items(scenes, names, max_count), block
        self.images = prep_images(np.stack([s.image for s in scenes]), image_size)
        self.rows = np.asarray([it.scene for it in self.items])

    def _scores(self, params: Any, image_emb: np.ndarray, texts: list[str]) -> np.ndarray:
        """Similarity of item i's image to texts[i], float64 [N]: the diagonals of block × block score matrices."""
        out = np.empty(len(texts), np.float64)
        for start in range(0, len(texts), self.block):
            rows = slice(start, start + self.block)
            scores, _ = self.embedder.similarity(image_emb[rows], self.embedder.texts(params, texts[rows]))
            out[rows] = np.diagonal(np.asarray(scores, np.float64))
        return out

    def __call__(self, params: Any, extra: Any) -> dict[str, float]:
        image_emb = np.asarray(self.embedder.images(params, self.images))[self.rows]
        acc = probe_accuracy(self.items, self._scores(params, image_emb, [it.true for it in self.items]),
                             self._scores(params, image_emb, [it.foil for it in self.items]))
        return {f"scenes/{k}": v for k, v in acc.items()}
