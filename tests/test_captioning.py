"""Caption metrics: live comparison with pycocoevalcap (the coco-caption reference), and hand-computed answers."""
import math
import random
import shutil

import pytest

from vlm_jax.evals import captioning as cap

# ---------------------------------------------------------------- tokenization

# Expected strings produced by pycocoevalcap 1.2's PTBTokenizer (Stanford CoreNLP 3.4.1 jar, -preserveLines
# -lowerCase) followed by its PUNCTUATIONS filter, run once with Java and pasted here.
PTB_EXPECTED = {
    "A man riding a wave on top of a surfboard.": "a man riding a wave on top of a surfboard",
    "The cat isn't sleeping; it's watching the birds!": "the cat is n't sleeping it 's watching the birds",
    "A plate with broccoli, carrots, and rice.": "a plate with broccoli carrots and rice",
    "Is that a giraffe? Yes, it is.": "is that a giraffe yes it is",
    "There's a red stop sign on the corner of 5th St. and Main.":
        "there 's a red stop sign on the corner of 5th st. and main",
    "A kid's bike leaning against a wall -- it's old.": "a kid 's bike leaning against a wall it 's old",
    '"A train pulling into the station."': "a train pulling into the station",
    "A pizza (with extra cheese) on a wooden table.": "a pizza -lrb- with extra cheese -rrb- on a wooden table",
    "People at the beach... flying kites.": "people at the beach flying kites",
    "An elephant that can't reach the water.": "an elephant that ca n't reach the water",
    "Two zebras grazing: one young, one old.": "two zebras grazing one young one old",
    'A sign that reads "Don\'t walk".': "a sign that reads do n't walk",
    "A bathroom with a toilet, sink & mirror.": "a bathroom with a toilet sink & mirror",
    "The clock tower reads 10:30.": "the clock tower reads 10:30",
    "They've set up tents near the lake.": "they 've set up tents near the lake",
    "A horse-drawn carriage on a city street.": "a horse-drawn carriage on a city street",
    "We'll see a boat in the harbor. I'm sure.": "we 'll see a boat in the harbor i 'm sure",
    "A surfer riding a big wave at 7 a.m.": "a surfer riding a big wave at 7 a.m.",
    "A man's shirt that says 'hello world'.": "a man 's shirt that says hello world",
    "TWO CATS ON A BED": "two cats on a bed",
    "A snowboarder jumps off a ramp!!": "a snowboarder jumps off a ramp !!",
    "It costs $5.99 or 10% in the U.S.": "it costs $ 5.99 or 10 % in the u.s.",
    "the dog’s “big” ball…  ‘hi’": "the dog 's big ball hi",
    "wanna gotta gimme lemme cannot gonna": "wan na got ta gim me lem me can not gon na",
    "a dog---cat — nice – ok": "a dog cat nice ok",
    "the dogs' bowls, a 1,000 dollar bill": "the dogs bowls a 1,000 dollar bill",
    "ONE two  Three\ttabs": "one two three tabs",
    "... ,leading ;six": "leading six",
    "": "",
}

# Documented differences from the Java tokenizer (rare in captions): what PTB gives vs what we give.
PTB_DIFFERENCES = {
    "one:two": ("one two", "one:two"),
    "a cat/ a mouse": ("a cat / a mouse", "a cat/ a mouse"),
    "rock'n'roll": ("rock 'n' roll", "rock'n'roll"),
}


@pytest.mark.parametrize("text", list(PTB_EXPECTED))
def test_tokenize_matches_ptb_pipeline(text):
    assert " ".join(cap.coco_tokenize(text)) == PTB_EXPECTED[text]


def test_tokenize_case_punctuation_and_documented_differences():
    assert cap.coco_tokenize("A Dog, running.") == ["a", "dog", "running"]
    assert cap.coco_tokenize("Don't!") == ["do", "n't"]  # PTB splits the clitic; we do too
    assert cap.coco_tokenize("?!? ... -- ;") == ["?!?"]  # only exact PUNCTUATIONS entries are dropped
    for text, (_, ours) in PTB_DIFFERENCES.items():
        assert " ".join(cap.coco_tokenize(text)) == ours


def _pycoco_ptb():
    """pycocoevalcap's Java tokenizer when both it and Java are available, else skip."""
    if shutil.which("java") is None:
        pytest.skip("no Java: the PTBTokenizer comparison needs it (the metrics themselves do not)")
    return pytest.importorskip("pycocoevalcap.tokenizer.ptbtokenizer").PTBTokenizer()


def test_tokenize_live_against_java_ptb():
    texts = [t for t in PTB_EXPECTED if t] + [c for c in _random_set(60, seed=3)[0].values()]
    got = _pycoco_ptb().tokenize({i: [{"caption": t}] for i, t in enumerate(texts)})
    assert [" ".join(cap.coco_tokenize(t)) for t in texts] == [got[i][0] for i in range(len(texts))]


# ---------------------------------------------------------------- against pycocoevalcap (the reference code)

VOCAB = "a the dog cat man woman on in with sits runs red big small park table near two".split()
PUNCT = ["", "", "", ",", ".", "!", "?", ";", "'s"]


def _noisy(words: list[str], rng: random.Random) -> str:
    """A raw caption: words dropped/replaced at random, random case and punctuation."""
    out = []
    for w in words:
        r = rng.random()
        if r < 0.15:
            continue
        w = rng.choice(VOCAB) if r < 0.3 else w
        out.append((w.capitalize() if rng.random() < 0.15 else w) + rng.choice(PUNCT))
    return " ".join(out)


def _random_set(num: int, seed: int) -> tuple[dict[int, str], dict[int, list[str]]]:
    """Seeded captions: each image has a base sentence; 1-5 references and the candidate are noisy copies."""
    rng = random.Random(seed)
    cands, refs = {}, {}
    for i in range(num):
        base = rng.choices(VOCAB, k=rng.randint(2, 12))
        refs[i] = [_noisy(base, rng) or base[0] for _ in range(rng.randint(1, 5))]
        cands[i] = _noisy(base, rng) if rng.random() < 0.8 else _noisy(rng.choices(VOCAB, k=rng.randint(0, 9)), rng)
    return cands, refs


HAND_SETS = [
    ({1: "A man riding a wave on top of a surfboard.", 2: "Two dogs play in the park.", 3: "A red bus."},
     {1: ["A surfer rides a large wave.", "A man on a surfboard riding a wave!", "Man surfing."],
      2: ["Two dogs playing with a frisbee in a park.", "Dogs in the park."],
      3: ["A red double-decker bus on the street.", "A bus, red and big, parked.", "The red bus.", "Bus."]}),
    ({"a": "the cat sat on the mat", "b": "a dog", "c": "nothing matches here"},
     {"a": ["the cat sat on the mat"], "b": ["a dog runs", "the dog"], "c": ["a cat", "the dog"]}),
    ({0: "cat", 1: "dog dog dog"}, {0: ["cat cat cat cat cat cat cat"], 1: ["dog"]}),
]


def _reference_scores(cands: dict, refs: dict) -> dict[str, float]:
    """pycocoevalcap's pure-Python Bleu/Cider/Rouge on our tokenization (space-joined), as the toolkit feeds them."""
    bleu_mod = pytest.importorskip("pycocoevalcap.bleu.bleu")
    cider_mod = pytest.importorskip("pycocoevalcap.cider.cider")
    rouge_mod = pytest.importorskip("pycocoevalcap.rouge.rouge")
    res = {i: [" ".join(cap.coco_tokenize(c))] for i, c in cands.items()}
    gts = {i: [" ".join(cap.coco_tokenize(r)) for r in rs] for i, rs in refs.items()}
    bleus, _ = bleu_mod.Bleu(4).compute_score(gts, res, verbose=0)
    cider, cider_each = cider_mod.Cider().compute_score(gts, res)
    rouge, rouge_each = rouge_mod.Rouge().compute_score(gts, res)
    ids = list(gts)
    return {**{f"BLEU-{k + 1}": b for k, b in enumerate(bleus)}, "CIDEr-D": float(cider), "ROUGE-L": float(rouge),
            "cider_each": dict(zip(ids, cider_each.tolist())), "rouge_each": dict(zip(ids, rouge_each.tolist()))}


@pytest.mark.parametrize("case", range(len(HAND_SETS) + 2))
def test_matches_pycocoevalcap(case):
    cands, refs = HAND_SETS[case] if case < len(HAND_SETS) else _random_set(200, seed=case)
    want = _reference_scores(cands, refs)
    got = cap.caption_scores(cands, refs)
    assert list(got) == ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "CIDEr-D", "ROUGE-L"]
    for key, value in got.items():
        assert value == pytest.approx(want[key], rel=1e-9, abs=1e-15), key
    assert cap.cider_d_scores(cands, refs) == pytest.approx(want["cider_each"], rel=1e-9, abs=1e-15)
    assert cap.rouge_l_scores(cands, refs) == pytest.approx(want["rouge_each"], rel=1e-9, abs=1e-15)
    assert cap.bleu(cands, refs, n=2) == pytest.approx([want["BLEU-1"], want["BLEU-2"]], rel=1e-9)
    assert cap.cider_d(cands, refs) == got["CIDEr-D"] and cap.rouge_l(cands, refs) == got["ROUGE-L"]


def test_random_set_is_not_degenerate():
    scores = cap.caption_scores(*_random_set(200, seed=4))
    assert 0.05 < scores["BLEU-4"] < scores["BLEU-1"] < 0.95 and 0.2 < scores["CIDEr-D"] and 0.2 < scores["ROUGE-L"]


# ---------------------------------------------------------------- hand-computed answers


def test_identical_caption_scores_one():
    s = cap.caption_scores({0: "A black cat sits on a mat."}, {0: ["a black cat sits on a mat"]})
    # (matches + 1e-15) / (total + 1e-9) per order: 1 up to ~1e-10
    assert s["BLEU-1"] == pytest.approx(1.0, abs=1e-9) and s["BLEU-4"] == pytest.approx(1.0, abs=1e-9)
    assert s["ROUGE-L"] == 1.0
    assert s["CIDEr-D"] == 0.0  # one image: idf = log(1 / df) = 0 for every n-gram (coco-caption does the same)


def test_no_overlap_scores_zero():
    s = cap.caption_scores({0: "red bus", 1: "green tree"}, {0: ["a cat sleeps"], 1: ["two dogs run"]})
    # BLEU is not exactly 0: each precision is (0 + 1e-15) / (total + 1e-9), and 1e-15 / 1e-9 = 1e-6 for the
    # 3- and 4-gram orders a 2-word caption lacks, so BLEU-4 = (~1e-16 * ~1e-16 * 1e-6 * 1e-6) ** (1/4) ~ 1e-11
    assert all(v == pytest.approx(0.0, abs=1e-10) for v in s.values()), s
    assert s["CIDEr-D"] == 0.0 and s["ROUGE-L"] == 0.0


def test_bleu_two_word_corpus_by_hand():
    # image 0: "black cat" vs "a black cat": unigrams 2/2, bigram "black cat" 1/1, lengths 2 vs 3
    # image 1: "a dog" vs "a cat": unigrams 1/2 ("a"), bigram 0/1, lengths 2 vs 2
    # corpus: p1 = 3/4, p2 = 1/2, candidate 4 words vs reference 5 -> brevity penalty exp(1 - 5/4) = exp(-0.25)
    # BLEU-1 = 0.75 exp(-0.25) = 0.584101; BLEU-2 = sqrt(0.75 * 0.5) exp(-0.25) = 0.476919
    b1, b2 = cap.bleu({0: "black cat", 1: "a dog"}, {0: ["a black cat"], 1: ["a cat"]}, n=2)
    assert b1 == pytest.approx(0.75 * math.exp(-0.25), rel=1e-8)
    assert b2 == pytest.approx(math.sqrt(0.375) * math.exp(-0.25), rel=1e-8)


def test_bleu_closest_reference_length():
    # "cat on mat" (3 words) vs "cat" (1) and "cat on a mat" (4): closest is 4 -> penalty exp(1 - 4/3);
    # "shortest" would pick 1 (no penalty). All three unigrams match -> BLEU-1 = exp(-1/3) = 0.716531
    (b1,) = cap.bleu({0: "cat on mat"}, {0: ["cat", "cat on a mat"]}, n=1)
    assert b1 == pytest.approx(math.exp(-1 / 3), rel=1e-8)
    # a tie (1 and 5 are both 2 away from 3) goes to the shorter reference: no penalty
    (b1,) = cap.bleu({0: "cat on mat"}, {0: ["cat", "a cat on a mat"]}, n=1)
    assert b1 == pytest.approx(1.0, rel=1e-8)


def test_bleu_clips_counts():
    # "the the the" vs "the cat": "the" counts at most once -> p1 = 1/3, brevity penalty none (3 > 2)
    (b1,) = cap.bleu({0: "the the the"}, {0: ["the cat"]}, n=1)
    assert b1 == pytest.approx(1 / 3, rel=1e-8)


def test_cider_d_by_hand():
    # two images, idf of an n-gram in one image's references = log(2 / 1). Image 0: "cat" vs "cat x7": unigram
    # cosine with clipping min(1, 7) * 7 / (1 * 7) = 1 (7 without clipping); no 2..4-grams in the candidate;
    # length penalty exp(-(0 - 6)^2 / (2 * 6^2)) = exp(-0.5); score = 10 * mean([e^-0.5, 0, 0, 0]) = 2.5 e^-0.5
    # Image 1: "dog" vs "dog": cosine 1 for unigrams, no penalty -> 10 * 1 / 4 = 2.5
    scores = cap.cider_d_scores({0: "cat", 1: "dog"}, {0: ["cat cat cat cat cat cat cat"], 1: ["dog"]})
    assert scores[0] == pytest.approx(2.5 * math.exp(-0.5), rel=1e-9)
    assert scores[1] == pytest.approx(2.5, rel=1e-9)


def test_rouge_l_by_hand():
    # LCS("the cat sat", "the black cat sat down") = 3: P = 1, R = 3/5; F = (1 + 1.44) P R / (R + 1.44 P)
    got = cap.rouge_l({0: "the cat sat"}, {0: ["the black cat sat down"]})
    assert got == pytest.approx(2.44 * 0.6 / (0.6 + 1.44), rel=1e-12)


EXTRA_IMAGES = {1: ["two dogs play in a park"], 2: ["a red bus on the street"], 3: ["a plate of food"]}
EXTRA_CANDS = {1: "dogs in a park", 2: "a bus", 3: "food on a plate"}


def test_cider_d_exact_reference_beats_partial_match():
    refs = {0: ["a man rides a big wave", "a surfer on a surfboard", "a man surfing"], **EXTRA_IMAGES}
    exact = cap.cider_d_scores({0: "a surfer on a surfboard", **EXTRA_CANDS}, refs)[0]
    partial = cap.cider_d_scores({0: "a surfer on the beach", **EXTRA_CANDS}, refs)[0]
    assert exact > partial > 0


def test_all_references_are_used():
    refs = {0: ["two dogs play outside", "a dog is running", "a kitten sleeping on the sofa"], **EXTRA_IMAGES}
    cands = {0: "kitten sleeping on the sofa", **EXTRA_CANDS}
    assert cap.bleu({0: cands[0]}, {0: refs[0]})[3] > 0.5  # 4-grams only in the third reference
    assert cap.cider_d_scores(cands, refs)[0] > 0.5
    assert cap.rouge_l_scores(cands, refs)[0] > 0.5
    without_third = {**refs, 0: refs[0][:2]}
    assert cap.bleu({0: cands[0]}, {0: without_third[0]})[3] < 1e-3
    assert cap.cider_d_scores(cands, without_third)[0] == 0.0


def test_mismatched_ids_or_empty_references_rejected():
    with pytest.raises(ValueError):
        cap.caption_scores({0: "a cat"}, {1: ["a cat"]})
    with pytest.raises(ValueError):
        cap.caption_scores({0: "a cat"}, {0: []})
