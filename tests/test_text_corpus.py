"""The language model's offline text corpus: WordNet's published synset count and a known gloss, the Tux Paint test
captions kept out, disjoint splits near the configured share, files equal to their recorded hashes and to a fresh
collection of the sources, and a tokenizer that round-trips held-out text in every script."""
from __future__ import annotations

import hashlib
import json
import unicodedata

import pytest


@pytest.fixture(scope="module")
def corpus(data_dir):
    from vlm_jax.data import text_corpus

    root = text_corpus.build(data_dir)
    return root, json.loads((root / "info.json").read_text())


def test_sources_splits_and_hashes(corpus, data_dir):
    from vlm_jax.data import text_corpus, tuxpaint
    from vlm_jax.data.tuxpaint.stamps import split_stamps

    root, info = corpus
    # WordNet 3.0: 82,115 noun + 13,767 verb + 18,156 adjective + 3,621 adverb synsets
    assert info["sources"]["wordnet"] == 82115 + 13767 + 18156 + 3621
    train, test = (text_corpus.load_split(data_dir, s) for s in ("train", "test"))
    both = set(train) | set(test)
    assert not set(train) & set(test) and len(both) == len(train) + len(test)
    assert "gym shoe: a canvas shoe with a pliable rubber sole" in both  # its synset: gym shoe, sneaker, tennis shoe
    n = len(both)
    share = len(test) / n
    assert abs(share - text_corpus.TEST_FRACTION) < 4 * (text_corpus.TEST_FRACTION / n) ** 0.5
    for f, digest in info["sha256"].items():
        assert hashlib.sha256((root / f).read_bytes()).hexdigest() == digest
    # a fresh collection of the sources gives the same sentences
    fresh = text_corpus.sentences(data_dir)
    assert {k: len(v) for k, v in fresh.items()} == info["sources"]
    assert {" ".join(s.split()) for v in fresh.values() for s in v} - {""} == both
    # Tux Paint: the training stamps' descriptions are in, the held-out stamps' captions out
    stamps, _ = tuxpaint.scan(tuxpaint.fetch(data_dir))
    held = split_stamps(stamps)
    folded = {" ".join(unicodedata.normalize("NFKC", t).casefold().split()) for t in both}
    held_texts = [t for s in stamps if s.path in held for t in (s.caption, *s.translations.values())]
    assert len(held_texts) > 1000
    assert not any(" ".join(unicodedata.normalize("NFKC", t).casefold().split()) in folded for t in held_texts)
    train_captions = [" ".join(s.caption.split()) for s in stamps if s.path not in held]
    assert sum(c in both for c in train_captions) > 0.95 * len(train_captions)


def test_tokenizer_round_trips_held_out_text(corpus, data_dir):
    from vlm_jax.data import text_corpus
    from vlm_jax.data.tokenizer import EOS_ID, Tokenizer

    root, _ = corpus
    tok = Tokenizer(root / "tokenizer.model")
    assert tok.vocab_size == text_corpus.VOCAB_SIZE
    test = text_corpus.load_split(data_dir, "test")
    scripts = {}
    for s in test:  # one held-out sentence per Unicode script of its first letter
        letter = next((c for c in s if c.isalpha()), None)
        if letter:
            scripts.setdefault(unicodedata.name(letter, "?").split()[0], s)
    assert len(scripts) >= 5, scripts.keys()
    texts = list(scripts.values()) + ["zyxxq ⚗ 𝔘"]  # byte fallback for what training never saw
    ids = tok.encode(texts, 256)
    assert all(EOS_ID in row for row in ids)
    want = [" ".join(unicodedata.normalize("NFKC", t).casefold().split()) for t in texts]
    assert tok.decode(ids) == want
