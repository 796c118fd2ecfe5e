"""Held-out image–text matching and masked-token prediction for models with a fusion encoder (FLAVA, ALBEF)."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from vlm_jax.evals.embedder import Embedder
from vlm_jax.evals.zeroshot import EvalSet

MatchFn = Callable[[Any, np.ndarray, np.ndarray], np.ndarray]  # (params, images, tokens) → match probability [N]


def hardest_other_class(img_emb: np.ndarray, class_emb: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per query, the class other than its own whose caption embedding is most similar to the image."""
    sims = img_emb @ class_emb.T
    sims[np.arange(len(labels)), labels] = -np.inf
    return np.argmax(sims, axis=1)


class MatchingEvaluator:
    """Each query image with its class caption and with another class's caption, drawn two ways: at random (fixed
    seed) and the hardest one by the model's own contrastive similarity. "match_acc": both pairs judged right by
    the match head (p > ½ for the true caption, < ½ for the other), over the 2N pairs; "pair_acc": the true
    caption scored above the other; "hard_*": the same against the hardest other class. Chance: 50% for the
    random negatives; the hard negatives are chosen against the model, so they have no chance level."""

    def __init__(self, embedder: Embedder, match: MatchFn, sets: dict[str, EvalSet], template: str, seed: int = 0):
        self.embedder, self.match, self.sets, self.template, self.seed = embedder, match, sets, template, seed

    def __call__(self, params: Any, extra: Any) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, s in self.sets.items():
            captions = [self.template.format(c) for c in s.class_names]
            tokens = self.embedder.tokenize(captions)
            img_emb = self.embedder.images(params, s.images)
            n_cls = len(captions)
            random = (s.labels + np.random.default_rng(self.seed).integers(1, n_cls, len(s.labels))) % n_cls
            hard = hardest_other_class(img_emb, self.embedder.texts(params, captions), s.labels)
            p_pos = self.match(params, s.images, tokens[s.labels])
            for prefix, negative in (("", random), ("hard_", hard)):
                p_neg = self.match(params, s.images, tokens[negative])
                out[f"{name}/all/{prefix}match_acc/model"] = float(np.mean(np.concatenate([p_pos > 0.5, p_neg < 0.5])))
                out[f"{name}/all/{prefix}pair_acc/model"] = float(np.mean(p_pos > p_neg))
            for metric in ("match_acc", "pair_acc"):
                out[f"{name}/all/{metric}/chance"] = 0.5
        return out


class MaskedTextEvaluator:
    """Masked-token accuracy on each query's class caption: from the text alone ("mlm_acc") and with the query
    image through the fusion encoder ("mmm_acc"), under a fixed masking."""

    def __init__(self, tokenize: Callable[[list[str]], np.ndarray], mask: Callable[[np.ndarray], tuple],
                 text_only: Callable[[Any, np.ndarray], np.ndarray] | None,
                 with_image: Callable[[Any, np.ndarray, np.ndarray], np.ndarray] | None,
                 sets: dict[str, EvalSet], template: str):
        self.tokenize, self.mask, self.text_only, self.with_image = tokenize, mask, text_only, with_image
        self.sets, self.template = sets, template

    def __call__(self, params: Any, extra: Any) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, s in self.sets.items():
            tokens = self.tokenize([self.template.format(s.class_names[i]) for i in s.labels])
            inputs, chosen = self.mask(tokens)
            if self.text_only is not None:
                pred = self.text_only(params, inputs)
                out[f"{name}/all/mlm_acc/model"] = float(np.mean(pred[chosen] == tokens[chosen]))
            if self.with_image is not None:
                pred = self.with_image(params, s.images, inputs)
                out[f"{name}/all/mmm_acc/model"] = float(np.mean(pred[chosen] == tokens[chosen]))
            out[f"{name}/masked_tokens"] = float(chosen.sum())
        return out
