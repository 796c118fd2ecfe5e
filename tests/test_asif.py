"""ASIF's relative representations (issue 33, part 6) against a float64 loop that follows the paper's recipe
step by step, and its defining property: two encoders that agree on the anchors up to any rotation of their
spaces match each other exactly, though they share no coordinates."""
from __future__ import annotations

import numpy as np
import pytest

from vlm_jax.evals.asif import ASIF, relative


def _loop_reference(emb, anchors, k, p):
    out = np.zeros((len(emb), len(anchors)))
    for i, e in enumerate(emb):
        sims = [float(np.dot(e, a) / np.sqrt(np.dot(e, e) * np.dot(a, a))) for a in anchors]
        ranked = sorted(range(len(anchors)), key=lambda j: -sims[j])[:k]
        for j in ranked:
            out[i, j] = max(sims[j], 0.0) ** p
        out[i] /= np.sqrt(np.sum(out[i] ** 2)) or 1.0
    return out


def test_relative_representation_against_a_loop():
    rng = np.random.default_rng(0)
    emb, anchors = rng.normal(size=(7, 5)) + 0.5, rng.normal(size=(20, 5)) + 0.5
    for k, p in ((1, 1.0), (5, 8.0), (20, 3.0)):
        got = relative(emb, anchors, k, p)
        np.testing.assert_allclose(got, _loop_reference(emb, anchors, k, p), atol=1e-12)
        assert ((got > 0).sum(axis=1) <= k).all()
    with pytest.raises(ValueError, match="k must be in 1"):
        relative(emb, anchors, 21, 1.0)


def test_rotated_encoders_match_through_the_anchors():
    """The image encoder is a random rotation of the text encoder's space: ASIF pairs each image with its own
    caption (the diagonal wins every row), while the raw cosine across the two spaces is meaningless."""
    rng = np.random.default_rng(1)
    dim, n_anchor, n = 16, 200, 30
    concept = rng.normal(size=(n_anchor + n, dim))
    rotation, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    texts = [f"t{i}" for i in range(n_anchor + n)]
    text_encoder = lambda ts: concept[[int(t[1:]) for t in ts]]  # noqa: E731
    image_encoder = lambda idx: concept[idx] @ rotation  # noqa: E731
    asif = ASIF(image_encoder, text_encoder, np.arange(n_anchor), texts[:n_anchor], k=40, p=4.0)
    scores = asif.scores(np.arange(n_anchor, n_anchor + n), texts[n_anchor:])
    assert (np.argmax(scores, axis=1) == np.arange(n)).all()
    raw = image_encoder(np.arange(n_anchor, n_anchor + n)) @ text_encoder(texts[n_anchor:]).T
    assert (np.argmax(raw, axis=1) == np.arange(n)).mean() < 0.5
