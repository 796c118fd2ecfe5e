"""The offline text corpus the project's small language model learns from (issue 32): sentences from packages only,
deduplicated, split by a hash of each sentence, with a SentencePiece tokenizer trained on its training split.

Sources (`SOURCES`):
* "wordnet": every WordNet 3.0 synset of the Debian `wordnet-base` package (nouns, verbs, adjectives, adverbs) as
  "<first lemma>: <gloss>", the gloss with its quoted examples (e.g. "gym shoe: a canvas shoe with a pliable rubber
  sole");
* "tuxpaint": the descriptions of the Tux Paint stamps of its *training* split, in English and every translation
  (the held-out stamps' descriptions stay out);
* "cldr": every emoji name in the 14 languages of the `emoji` package (CLDR annotations).
No sentence of any source equals a text of a held-out Tux Paint stamp in any language (case-folded), so a frozen LM
never read a test caption.

`build(data_dir)` writes <data_dir>/text_corpus/<VERSION>/ once (file-locked): train.txt and test.txt (one
sentence per line, sorted), tokenizer.model and info.json (sentences per source and split, the .deb files they
came from, sha256 of each file). A sentence is held out when the first 8 bytes of its SHA-256 (big-endian) modulo
1,000 fall below 1,000 × TEST_FRACTION: the same sentence always lands in the same split, whatever else changes.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
from pathlib import Path

from vlm_jax.data import base, debs

VERSION = "1.1.0"
SOURCES = ("wordnet", "tuxpaint", "cldr")
TEST_FRACTION = 0.02
VOCAB_SIZE = 8000
WORDNET = "wordnet-base"
WORDNET_FILES = tuple(f"usr/share/wordnet/data.{pos}" for pos in ("noun", "verb", "adj", "adv"))


def normalise(text: str) -> str:
    """Whitespace runs as one space, no leading or trailing space."""
    return " ".join(text.split())


def wordnet_sentences(data_dir: str | Path) -> list[str]:
    """"<lemma>: <gloss>" for every synset of wordnet-base's four data files, in file order."""
    root = debs.fetch(data_dir, WORDNET, "wordnet", lambda n: n in WORDNET_FILES or n.endswith("/copyright"),
                      "The unpacked WordNet data")
    out = []
    for name in WORDNET_FILES:
        for line in (root / name).read_text(encoding="latin-1").splitlines():
            if line.startswith("  ") or "|" not in line:  # the licence header
                continue
            fields, gloss = line.split("|", 1)
            lemma = fields.split()[4].replace("_", " ")
            lemma = re.sub(r"\([a-z]+\)$", "", lemma)  # adjective markers such as "(a)", "(p)"
            out.append(normalise(f"{lemma}: {gloss}"))
    return out


def _stamps(data_dir: str | Path) -> tuple[list, set[str]]:
    """The Tux Paint stamps and the paths of its held-out split."""
    from vlm_jax.data import tuxpaint
    from vlm_jax.data.tuxpaint.stamps import split_stamps

    stamps, _ = tuxpaint.scan(tuxpaint.fetch(data_dir))
    return stamps, split_stamps(stamps)


def _texts(stamp) -> tuple[str, ...]:
    return (stamp.caption, *stamp.translations.values())


def tuxpaint_sentences(data_dir: str | Path) -> list[str]:
    """The English descriptions and translations of the Tux Paint stamps outside its test split."""
    stamps, held_out = _stamps(data_dir)
    return [normalise(t) for s in stamps if s.path not in held_out for t in _texts(s)]


def held_out_keys(data_dir: str | Path) -> set[str]:
    """Every text of a held-out Tux Paint stamp (caption and translations) as the tokenizer sees it
    (`caption_key`): no corpus sentence equals one, from whichever source (some translations repeat another
    stamp's English caption, and short ones equal emoji names)."""
    from vlm_jax.data.tuxpaint.stamps import caption_key

    stamps, held_out = _stamps(data_dir)
    return {caption_key(t) for s in stamps if s.path in held_out for t in _texts(s)}


def cldr_sentences() -> list[str]:
    """Every emoji name in every language of the `emoji` package."""
    from vlm_jax.data import multilingual

    return [normalise(name) for lang in multilingual.LANGUAGES for name in multilingual.names(lang).values()]


def sentences(data_dir: str | Path) -> dict[str, list[str]]:
    """Each source's sentences (before deduplication), none equal to a held-out Tux Paint text (`held_out_keys`)."""
    from vlm_jax.data.tuxpaint.stamps import caption_key

    unseen = held_out_keys(data_dir)
    raw = {"wordnet": wordnet_sentences(data_dir), "tuxpaint": tuxpaint_sentences(data_dir), "cldr": cldr_sentences()}
    return {k: [t for t in v if caption_key(t) not in unseen] for k, v in raw.items()}


def is_held_out(sentence: str) -> bool:
    """Whether `sentence` belongs to the test split (by its SHA-256; see the module docstring)."""
    digest = hashlib.sha256(sentence.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % 1000 < round(1000 * TEST_FRACTION)


def corpus_dir(data_dir: str | Path) -> Path:
    """<data_dir>/text_corpus/<VERSION>."""
    return Path(data_dir) / "text_corpus" / VERSION


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build(data_dir: str | Path) -> Path:
    """The corpus folder, built once (see the module docstring); read-only runs only find it."""
    from vlm_jax.data.tokenizer import write_tokenizer

    out = corpus_dir(data_dir)
    if (out / "info.json").exists():
        return out
    if base.is_read_only():
        raise base.not_prepared("The text corpus", data_dir, "`vlm_jax.data.text_corpus.build`")
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{VERSION}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (out / "info.json").exists():
            return out
        by_source = sentences(data_dir)
        unique = sorted({s for texts in by_source.values() for s in texts if s})
        splits = {"train": [s for s in unique if not is_held_out(s)], "test": [s for s in unique if is_held_out(s)]}
        tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
        tmp.mkdir(parents=True, exist_ok=True)
        for split, texts in splits.items():
            (tmp / f"{split}.txt").write_text("".join(f"{s}\n" for s in texts), encoding="utf-8")
        write_tokenizer(splits["train"], tmp / "tokenizer.model", VOCAB_SIZE)
        info = {"version": VERSION, "sources": {k: len(v) for k, v in by_source.items()},
                "sentences": {k: len(v) for k, v in splits.items()}, "test_fraction": TEST_FRACTION,
                "debs": {p: getattr(debs.find_deb(data_dir, p), "name", None)
                         for p in (WORDNET, "tuxpaint-stamps-default")},
                "sha256": {f: _sha256(tmp / f) for f in ("train.txt", "test.txt", "tokenizer.model")}}
        (tmp / "info.json").write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
        tmp.replace(out)
    return out


def load_split(data_dir: str | Path, split: str) -> list[str]:
    """The sentences of `split` ("train" or "test"), building the corpus if needed."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return (build(data_dir) / f"{split}.txt").read_text(encoding="utf-8").splitlines()
