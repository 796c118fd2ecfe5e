"""Zero-shot classification and image↔text retrieval, each reported beside a pixel baseline and chance."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from vlm_jax.evals.embedder import Embedder
from vlm_jax.evals.metrics import chance_topk, pixel_features, topk_hits

KS = (1, 5)


@dataclass
class EvalSet:
    """Query images with labels into a class list, plus per-class reference images for the pixel baseline."""

    images: np.ndarray  # float32 [Q, H, W, 3] in [-1, 1]
    labels: np.ndarray  # int [Q] indices into class_names
    class_names: list[str]
    class_images: np.ndarray | None  # float32 [C, H, W, 3]: a training-style image of each class (None: no pixel NN)
    subsets: dict[str, np.ndarray] = field(default_factory=dict)  # name → bool mask over queries
    retrieval: bool = True  # image↔caption retrieval over the query pool (needs one query per class)
    pixel_images: np.ndarray | None = None  # baseline inputs at their own resolution (default: `images`)
    pixel_class_images: np.ndarray | None = None  # [C, h, w, 3] or [S, C, h, w, 3]: one per training style
    references: list[list[str]] | None = None  # captioning: every reference caption of each query image
    caption_pool_pixels: np.ndarray | None = None  # [M, h, w, 3] training images at the pixel-baseline size …
    caption_pool_texts: list[str] | None = None  # … and their captions: the pixel-NN captioning baseline


def mean_hits(hits: dict[int, np.ndarray], subsets: dict[str, np.ndarray], name: str) -> dict[str, float]:
    """Averages top-k hits over each subset of queries."""
    out = {}
    for sub, mask in subsets.items():
        if mask.any():
            for k, h in hits.items():
                out[f"{sub}/{name}@{k}"] = float(np.mean(h[mask]))
    return out


def similarity_scores(queries: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """[Q, C] similarities; `classes` [S, C, F] (several references per class) takes the best one."""
    if classes.ndim == 2:
        return queries @ classes.T
    return np.max(np.einsum("qf,scf->sqc", queries, classes), axis=0)


def evaluate_set(ev: EvalSet, model_scores: tuple[np.ndarray, np.ndarray], pixel_query: np.ndarray,
                 pixel_class: np.ndarray | None, ks: Sequence[int] = KS) -> dict[str, float]:
    """Model (its (image→text, text→image) scores [Q, C], `Embedder.similarity`), pixel-baseline (when the set
    has class images) and chance numbers for one EvalSet."""
    subsets = {"all": np.ones(len(ev.labels), bool), **ev.subsets}
    out: dict[str, float] = {}
    n_cls = len(ev.class_names)
    pixel = None if pixel_class is None else (similarity_scores(pixel_query, pixel_class),) * 2
    for who, pair in (("model", model_scores), ("pixel", pixel)):
        if pair is None:
            continue
        scores, scores_t2i = pair
        res = mean_hits(topk_hits(scores, ev.labels, ks), subsets, "top")
        if ev.retrieval:  # pool of aligned (image i, caption of label i) pairs
            pool = np.arange(len(ev.labels))
            res.update(mean_hits(topk_hits(scores[:, ev.labels], pool, ks), subsets, "i2t_R"))
            res.update(mean_hits(topk_hits(scores_t2i[:, ev.labels].T, pool, ks), subsets, "t2i_R"))
        out.update({f"{k}/{who}": v for k, v in res.items()})
    for sub in subsets:
        for k in ks:
            out[f"{sub}/top@{k}/chance"] = chance_topk(n_cls, k)
            if ev.retrieval:
                for d in ("i2t_R", "t2i_R"):
                    out[f"{sub}/{d}@{k}/chance"] = chance_topk(len(ev.labels), k)
    out["num_queries"] = float(len(ev.labels))
    out["num_classes"] = float(n_cls)
    return out


def class_pixel_features(ev: EvalSet) -> np.ndarray | None:
    """[C, F] or [S, C, F] pixel features of the class reference images (None without any)."""
    refs = ev.class_images if ev.pixel_class_images is None else ev.pixel_class_images
    if refs is None:
        return None
    if refs.ndim == 5:
        return np.stack([pixel_features(r) for r in refs])
    return pixel_features(refs)


class ZeroShotEvaluator:
    """Evaluates several EvalSets with class prompts built from templates (embeddings averaged)."""

    def __init__(self, embedder: Embedder, sets: dict[str, EvalSet], templates: Sequence[str]):
        self.embedder, self.sets, self.templates = embedder, sets, list(templates)
        self._pixels = {name: (pixel_features(s.images if s.pixel_images is None else s.pixel_images),
                               class_pixel_features(s))
                        for name, s in sets.items()}

    def class_embeddings(self, params: Any, names: list[str]) -> np.ndarray:
        """Prompt-ensembled class representations (`Embedder.class_embeddings`)."""
        return self.embedder.class_embeddings(params, names, self.templates)

    def __call__(self, params: Any, extra: Any = None) -> dict[str, float]:
        out: dict[str, float] = {}
        self._last: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for name, ev in self.sets.items():
            img = self.embedder.images(params, ev.images)
            cls = self.class_embeddings(params, ev.class_names)
            self._last[name] = (img, cls)
            px_q, px_c = self._pixels[name]
            scores = self.embedder.similarity(img, cls)
            out.update({f"{name}/{k}": v for k, v in evaluate_set(ev, scores, px_q, px_c).items()})
        return out

    def summary_images(self, rows: int = 6, k: int = 6) -> dict[str, np.ndarray]:
        """After a call: per set, a text→image retrieval grid (uint8) of `rows` queries spread over the set."""
        out = {}
        for name, (img, cls) in getattr(self, "_last", {}).items():
            ev = self.sets[name]
            queries = np.linspace(0, len(ev.labels) - 1, min(rows, len(ev.labels))).astype(int)
            shown = ev.images if ev.pixel_images is None else ev.pixel_images
            _, t2i = self.embedder.similarity(img, cls)
            out[f"{name}/retrieval"] = retrieval_grid(shown, ev.labels, ev.labels[queries],
                                                      t2i[:, ev.labels[queries]].T, k)
        return out


def retrieval_grid(images: np.ndarray, labels: np.ndarray, query_labels: np.ndarray, sims: np.ndarray,
                   k: int = 6) -> np.ndarray:
    """uint8 grid, one row per query: its k most similar images (float [-1, 1]), those of the query's class
    framed in green, the others in red."""
    from vlm_jax.train.tensorboard import grid

    top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    tiles = np.clip(np.rint((np.asarray(images)[top.ravel()] + 1) * 127.5), 0, 255).astype(np.uint8)
    hit = (labels[top] == np.asarray(query_labels)[:, None]).ravel()
    frame = np.where(hit[:, None], np.array([[0, 170, 0]]), np.array([[200, 0, 0]])).astype(np.uint8)
    for edge in (np.s_[:, :1], np.s_[:, -1:], np.s_[:, :, :1], np.s_[:, :, -1:]):
        tiles[edge] = frame[:, None, None, :]
    return grid(tiles, columns=k)
