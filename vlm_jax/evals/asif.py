"""ASIF (Norelli et al. 2023): image–text matching with no joint training. Two independently trained unimodal
encoders and a set of anchor image–caption pairs: an image is represented by its similarities to the anchor
images, a text by its similarities to the anchor captions — the same coordinates on both sides, so the two become
comparable. Each relative representation keeps its k largest similarities (the rest 0), raised to the power p,
and the match score is the cosine of the two sparse vectors."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from vlm_jax.evals.metrics import l2_normalize


def _unit(x: np.ndarray) -> np.ndarray:
    """float64 rows scaled to unit norm."""
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-300)


def relative(embeddings: np.ndarray, anchors: np.ndarray, k: int, p: float) -> np.ndarray:
    """float64 [N, A] unit rows: cosine similarities of `embeddings` [N, F] to `anchors` [A, F], all but each row's
    k largest set to 0, the kept ones (negatives clipped to 0) raised to the power p."""
    if not 1 <= k <= len(anchors):
        raise ValueError(f"k must be in 1 … {len(anchors)} (the anchors), got {k}")
    sims = _unit(embeddings) @ _unit(anchors).T
    keep = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    out = np.zeros_like(sims)
    rows = np.arange(len(sims))[:, None]
    out[rows, keep] = np.clip(sims[rows, keep], 0.0, None) ** p
    norm = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.where(norm > 0, norm, 1.0)


class ASIF:
    """Anchors encoded once; `scores(images, texts)` → [N, M] cosines of the relative representations."""

    def __init__(self, image_encoder: Callable[[np.ndarray], np.ndarray],
                 text_encoder: Callable[[Sequence[str]], np.ndarray], anchor_images: np.ndarray,
                 anchor_texts: Sequence[str], k: int, p: float):
        if len(anchor_images) != len(anchor_texts):
            raise ValueError(f"{len(anchor_images)} anchor images but {len(anchor_texts)} anchor captions")
        self.image_encoder, self.text_encoder, self.k, self.p = image_encoder, text_encoder, int(k), float(p)
        self.anchor_images = np.asarray(image_encoder(anchor_images), np.float64)
        self.anchor_texts = np.asarray(text_encoder(list(anchor_texts)), np.float64)

    def image_space(self, images: np.ndarray) -> np.ndarray:
        return relative(self.image_encoder(images), self.anchor_images, self.k, self.p)

    def text_space(self, texts: Sequence[str]) -> np.ndarray:
        return relative(self.text_encoder(list(texts)), self.anchor_texts, self.k, self.p)

    def scores(self, images: np.ndarray, texts: Sequence[str]) -> np.ndarray:
        return self.image_space(images) @ self.text_space(texts).T


def minilm_encoder(batch_size: int = 256, max_len: int = 32) -> Callable[[Sequence[str]], np.ndarray]:
    """The packaged MiniLM-L6 (all-MiniLM-L6-v2) as a sentence encoder: WordPiece, mean-pooled tokens, unit norm —
    texts → float32 [N, 384]."""
    import flax.traverse_util as traverse
    import jax
    import jax.numpy as jnp

    from vlm_jax.data.wordpiece import WordPieceTokenizer
    from vlm_jax.models.bert import BertEncoder
    from vlm_jax.pretrained import minilm, minilm_dir

    fields, flat = minilm()
    params = traverse.unflatten_dict({k: jnp.asarray(v) for k, v in flat.items()}, sep="/")
    tokenizer = WordPieceTokenizer(minilm_dir() / "vocab.txt")
    apply = jax.jit(lambda ids: BertEncoder(**fields).apply({"params": params}, ids)[0])

    def encode(texts: Sequence[str]) -> np.ndarray:
        ids = tokenizer.encode(list(texts), max_len)
        out = []
        for start in range(0, len(ids), batch_size):
            chunk = ids[start:start + batch_size]
            padded = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - len(chunk), axis=0)])
            out.append(np.asarray(apply(padded))[:len(chunk)])
        return l2_normalize(np.concatenate(out)) if out else np.zeros((0, fields["width"]), np.float32)

    return encode
