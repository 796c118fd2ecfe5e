"""Caption metrics computed the way the coco-caption toolkit (pycocoevalcap) computes them, in pure Python/NumPy.

Inputs are raw strings: `candidates` maps an image id to one generated caption, `references` maps the same ids
to a non-empty list of reference captions. Every function tokenizes with `coco_tokenize` itself.

Scores are raw, exactly as coco-caption returns them: BLEU-n and ROUGE-L are fractions in [0, 1]; CIDEr-D
includes coco-caption's x10 factor, so it lies in [0, 10] (good COCO models reach ~1.2; papers usually print
all of these x100, e.g. "CIDEr 120").

Tokenization (`coco_tokenize`) emulates coco-caption's pipeline: the Java Stanford PTBTokenizer
(CoreNLP 3.4.1, options -preserveLines -lowerCase) followed by dropping tokens that are in coco-caption's
PUNCTUATIONS list. What it does, in order:
  1. lower-case the text;
  2. drop double quotes (" “ ” and the `` '' forms), backticks, dashes made of two or more hyphens and the
     em/en dashes (PTB turns them all into tokens the PUNCTUATIONS list removes); "…" and runs of three or
     more periods, also inside a word ("hello...world"), become a "..." token (dropped); curly apostrophes
     become plain ones;
  3. turn brackets into the lower-cased PTB bracket tokens -lrb- -rrb- -lsb- -rsb- -lcb- -rcb-. These are
     KEPT, as in the real pipeline: PUNCTUATIONS lists "-LRB-" etc. in upper case, but -lowerCase has already
     lower-cased them, so coco-caption never removes them;
  4. on each whitespace-separated word, split off leading ' , ; : and a leading "$", and trailing runs of
     ! and ?, , ; : % ' a single "-" and a final "." (the period stays on abbreviations: words
     with an inner period such as "u.s.", single letters such as "a.", and mr. mrs. ms. dr. st. jr. sr. vs.
     etc. prof. mt.);
  5. split English clitics as PTB does: "don't" -> "do n't", "can't" -> "ca n't", "it's" -> "it 's", and
     likewise 'm 're 've 'll 'd; "cannot", "gonna", "gotta", "wanna", "gimme", "lemme" -> two tokens,
     "'tis" -> "'t is";
  6. drop the tokens in PUNCTUATIONS (so single ! ? . , ; : - -- ... ' ` remain out; "!!", "?!", "%", "$",
     "'s", "n't" stay, as in coco-caption).
Known differences from the Java tokenizer (all rare in captions): other abbreviation or acronym rules (PTB's
lists are longer and case-sensitive), inner colons between letters ("one:two" -> PTB splits), inner symbols
("c+d", "x=y", "cat/" -> PTB splits), apostrophes inside words other than the clitics above ("rock'n'roll",
"y'all", "4'10"; "ol'" loses its apostrophe, "'em" and "'cause" keep theirs as in PTB), emoticons,
URLs/e-mails, and non-ASCII normalisation beyond the quotes/dashes above.

Metric edge cases: ROUGE-L of an empty candidate is 0 (coco-caption splits "" into [""] and so gives 1.0 when a
reference is empty too); everything else matches pycocoevalcap 1.2 fed the same tokens (space-joined) up to
float rounding (tests/test_captioning.py compares them live). CIDEr-D's Gaussian penalty compares lengths in
bigrams as coco-caption's code does; that equals the word-length difference whenever neither side is empty.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from typing import Callable, Hashable, Mapping, Sequence

import numpy as np

# coco-caption's PUNCTUATIONS list, verbatim (its upper-case bracket names never match lower-cased tokens)
PUNCTUATIONS = frozenset({"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-",
                          ".", "?", "!", ",", ":", "-", "--", "...", ";"})
BLEU_TINY, BLEU_SMALL = 1e-15, 1e-9  # coco-caption's constants keeping BLEU finite when nothing matches
CIDER_N, CIDER_SIGMA = 4, 6.0
ROUGE_BETA = 1.2

_BRACKETS = {"(": " -lrb- ", ")": " -rrb- ", "[": " -lsb- ", "]": " -rsb- ", "{": " -lcb- ", "}": " -rcb- "}
_DROPPED = re.compile(r'["“”`]|--+|[—–]')
_ABBREVIATIONS = frozenset({"mr", "mrs", "ms", "dr", "st", "jr", "sr", "vs", "etc", "prof", "mt"})
_SPLIT_WORDS = {"cannot": ["can", "not"], "gonna": ["gon", "na"], "gotta": ["got", "ta"],
                "wanna": ["wan", "na"], "gimme": ["gim", "me"], "lemme": ["lem", "me"], "'tis": ["'t", "is"]}
_ELLIPSIS = re.compile(r"\.\.\.+")
_KEEP_WHOLE = frozenset({"'em", "'cause", *(t.strip() for t in _BRACKETS.values())})
_CLITIC = re.compile(r"(.+?)(n't|'s|'m|'re|'ve|'ll|'d)")
_TRAILING = re.compile(r"([!?]+|[,;:%'-])$")

Tokens = list[str]
NgramCounts = Counter  # Counter[tuple[str, ...]]


def _normalise(text: str) -> str:
    """Lower-cased text with quotes/dashes dropped, brackets as PTB tokens and curly apostrophes made plain."""
    text = text.lower().replace("‘", "'").replace("’", "'").replace("…", "...")
    text = _ELLIPSIS.sub(" ... ", _DROPPED.sub(" ", text))
    return "".join(_BRACKETS.get(ch, ch) for ch in text)


def _is_abbreviation(word: str) -> bool:
    """Whether the final period of `word` belongs to it (PTB keeps it on abbreviations)."""
    stem = word[:-1]
    return "." in stem or (len(stem) == 1 and stem.isalpha()) or stem in _ABBREVIATIONS


def _split_word(word: str) -> Tokens:
    """PTB-style split of one whitespace-separated word into tokens (punctuation still included)."""
    if word in _KEEP_WHOLE:
        return [word]
    head: Tokens = []
    while len(word) > 1 and word[0] in "',;:$" and word not in _SPLIT_WORDS and word not in _KEEP_WHOLE:
        head.append(word[0])
        word = word[1:]
    tail: Tokens = []
    while len(word) > 1:
        match = _TRAILING.search(word)
        if match and match.start() > 0:
            cut = match.start()
        elif not match and word.endswith(".") and not _is_abbreviation(word):
            cut = len(word) - 1
        else:
            break
        tail.insert(0, word[cut:])
        word = word[:cut]
    clitic = _CLITIC.fullmatch(word)
    body = _SPLIT_WORDS.get(word) or (list(clitic.groups()) if clitic else [word])
    return head + body + tail


def coco_tokenize(text: str) -> Tokens:
    """Lower-cased, PTB-split tokens without coco-caption's punctuation (see the module docstring)."""
    tokens = [tok for word in _normalise(text).split() for tok in _split_word(word)]
    return [tok for tok in tokens if tok not in PUNCTUATIONS]


def ngram_counts(tokens: Sequence[str], n: int) -> NgramCounts:
    """Counts of every 1..n-gram of `tokens`."""
    return Counter(tuple(tokens[i:i + k]) for k in range(1, n + 1) for i in range(len(tokens) - k + 1))


def _tokenized(candidates: Mapping[Hashable, str],
               references: Mapping[Hashable, Sequence[str]]) -> tuple[list, list[Tokens], list[list[Tokens]]]:
    """Ids, tokenized candidates and tokenized references, after checking both cover the same ids."""
    if set(candidates) != set(references):
        raise ValueError("candidates and references must have the same image ids")
    ids = list(references)
    if not ids:
        raise ValueError("no images to score")
    if any(isinstance(references[i], str) or len(references[i]) == 0 for i in ids):
        raise ValueError("every image needs a non-empty list of reference strings")
    return ids, [coco_tokenize(candidates[i]) for i in ids], [[coco_tokenize(r) for r in references[i]] for i in ids]


# ---------------------------------------------------------------- BLEU


def _closest_length(lengths: Sequence[int], target: int) -> int:
    """Reference length closest to the candidate's; ties go to the shorter one."""
    return min(lengths, key=lambda length: (abs(length - target), length))


def _bleu_stats(cand: Tokens, refs: list[Tokens], n: int) -> np.ndarray:
    """[candidate length, effective reference length, matches per order (n), candidate n-grams per order (n)]."""
    clip: NgramCounts = Counter()
    for ref in refs:
        clip |= ngram_counts(ref, n)  # union keeps the largest count of each n-gram over the references
    matches = [0] * n
    for gram, count in ngram_counts(cand, n).items():
        matches[len(gram) - 1] += min(count, clip[gram])
    totals = [max(0, len(cand) - k) for k in range(n)]
    return np.array([len(cand), _closest_length([len(r) for r in refs], len(cand)), *matches, *totals], np.int64)


def _bleu_from_stats(stats: np.ndarray, n: int) -> list[float]:
    """BLEU-1..n from summed statistics: geometric mean of smoothed precisions times the brevity penalty."""
    cand_len, ref_len = float(stats[0]), float(stats[1])
    matches, totals = stats[2:2 + n], stats[2 + n:]
    scores, product = [], 1.0
    for k in range(n):
        product *= (float(matches[k]) + BLEU_TINY) / (float(totals[k]) + BLEU_SMALL)
        scores.append(product ** (1.0 / (k + 1)))
    ratio = (cand_len + BLEU_TINY) / (ref_len + BLEU_SMALL)
    penalty = math.exp(1.0 - 1.0 / ratio) if ratio < 1 else 1.0
    return [s * penalty for s in scores]


def _bleu(cands: list[Tokens], refs: list[list[Tokens]], n: int) -> list[float]:
    """Corpus BLEU-1..n of tokenized captions."""
    return _bleu_from_stats(sum(_bleu_stats(c, r, n) for c, r in zip(cands, refs)), n)


def bleu(candidates: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]],
         n: int = 4) -> list[float]:
    """Corpus-level BLEU-1..n (coco-caption: clipped counts over all references, 'closest' brevity penalty)."""
    _, cands, refs = _tokenized(candidates, references)
    return _bleu(cands, refs, n)


# ---------------------------------------------------------------- CIDEr-D


def _document_frequency(refs: list[list[Tokens]]) -> NgramCounts:
    """Number of images whose references contain each n-gram."""
    df: NgramCounts = Counter()
    for image_refs in refs:
        df.update(set().union(*(ngram_counts(r, CIDER_N) for r in image_refs)))
    return df


def _tfidf(tokens: Tokens, df: NgramCounts, log_images: float) -> tuple[list[dict], np.ndarray, int]:
    """Per-order tf-idf vectors (raw counts x log(N/df)), their norms, and the length (coco-caption counts bigrams)."""
    vectors: list[dict] = [{} for _ in range(CIDER_N)]
    for gram, count in ngram_counts(tokens, CIDER_N).items():
        vectors[len(gram) - 1][gram] = float(count) * (log_images - math.log(max(1.0, float(df[gram]))))
    norms = np.array([math.sqrt(sum(w * w for w in vec.values())) for vec in vectors])
    return vectors, norms, max(0, len(tokens) - 1)


def _cider_similarity(cand: tuple, ref: tuple) -> np.ndarray:
    """Per-order clipped cosine similarity times the Gaussian length penalty."""
    (cvec, cnorm, clen), (rvec, rnorm, rlen) = cand, ref
    sims = np.zeros(CIDER_N)
    for k in range(CIDER_N):
        sims[k] = sum(min(w, rvec[k].get(g, 0.0)) * rvec[k].get(g, 0.0) for g, w in cvec[k].items())
        if cnorm[k] != 0 and rnorm[k] != 0:
            sims[k] /= cnorm[k] * rnorm[k]
    return sims * math.exp(-float(clen - rlen) ** 2 / (2 * CIDER_SIGMA ** 2))


def _cider_d(cands: list[Tokens], refs: list[list[Tokens]]) -> np.ndarray:
    """Per-image CIDEr-D of tokenized captions (document frequencies from these references)."""
    df, log_images = _document_frequency(refs), math.log(float(len(refs)))
    scores = []
    for cand, image_refs in zip(cands, refs):
        cand_vec = _tfidf(cand, df, log_images)
        total = sum(_cider_similarity(cand_vec, _tfidf(r, df, log_images)) for r in image_refs)
        scores.append(10.0 * float(np.mean(total)) / len(image_refs))
    return np.array(scores)


def _per_image(score: Callable, candidates: Mapping[Hashable, str],
               references: Mapping[Hashable, Sequence[str]]) -> dict[Hashable, float]:
    """{image id: score} of a per-image scorer over tokenized captions."""
    ids, cands, refs = _tokenized(candidates, references)
    return dict(zip(ids, score(cands, refs).tolist()))


def _corpus(score: Callable, candidates: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]]) -> float:
    """The mean of a per-image scorer over tokenized captions."""
    _, cands, refs = _tokenized(candidates, references)
    return float(np.mean(score(cands, refs)))


def cider_d_scores(candidates: Mapping[Hashable, str],
                   references: Mapping[Hashable, Sequence[str]]) -> dict[Hashable, float]:
    """Per-image CIDEr-D (x10 scale; idf from the evaluated set's references, so one image alone scores 0)."""
    return _per_image(_cider_d, candidates, references)


def cider_d(candidates: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]]) -> float:
    """Corpus CIDEr-D: the mean of the per-image scores."""
    return _corpus(_cider_d, candidates, references)


# ---------------------------------------------------------------- ROUGE-L


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token lists."""
    row = [0] * (len(b) + 1)
    for x in a:
        diagonal = 0
        for j, y in enumerate(b, start=1):
            diagonal, row[j] = row[j], diagonal + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


def _rouge_l_image(cand: Tokens, refs: list[Tokens]) -> float:
    """ROUGE-L F-measure from the best precision and the best recall over the references (coco-caption)."""
    if not cand:
        return 0.0
    lcs = [_lcs_length(r, cand) for r in refs]
    precision = max(m / float(len(cand)) for m in lcs)
    recall = max(m / float(len(r)) if r else 0.0 for m, r in zip(lcs, refs))
    if precision == 0 or recall == 0:
        return 0.0
    return (1 + ROUGE_BETA ** 2) * precision * recall / float(recall + ROUGE_BETA ** 2 * precision)


def _rouge_l(cands: list[Tokens], refs: list[list[Tokens]]) -> np.ndarray:
    """Per-image ROUGE-L of tokenized captions."""
    return np.array([_rouge_l_image(c, r) for c, r in zip(cands, refs)])


def rouge_l_scores(candidates: Mapping[Hashable, str],
                   references: Mapping[Hashable, Sequence[str]]) -> dict[Hashable, float]:
    """Per-image ROUGE-L (beta = 1.2)."""
    return _per_image(_rouge_l, candidates, references)


def rouge_l(candidates: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]]) -> float:
    """Corpus ROUGE-L: the mean of the per-image scores."""
    return _corpus(_rouge_l, candidates, references)


# ---------------------------------------------------------------- all together


def caption_scores(candidates: Mapping[Hashable, str],
                   references: Mapping[Hashable, Sequence[str]]) -> dict[str, float]:
    """BLEU-1..4, CIDEr-D and ROUGE-L, raw as coco-caption reports them (not percentages)."""
    _, cands, refs = _tokenized(candidates, references)
    scores = {f"BLEU-{k + 1}": s for k, s in enumerate(_bleu(cands, refs, 4))}
    scores["CIDEr-D"] = float(np.mean(_cider_d(cands, refs)))
    scores["ROUGE-L"] = float(np.mean(_rouge_l(cands, refs)))
    return scores
