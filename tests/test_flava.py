"""FLAVA-style objective: BERT masking exact and 80/10/10; ITM hard negatives drawn from the softmax of the
similarities times the model's logit scale t, without the positive (statistical check on realistic cosines); the
MLM loss and the MMM loss (text CE on masked tokens + pixel MSE on masked patches) against float64 NumPy
references; no hidden pixel reaches the MMM prediction; the matching evaluator against brute force on stubs; and a
run through `train()` whose total loss is the weighted sum of its parts and whose FLAVA evaluators equal references
recomputed from the final parameters."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlm_jax.data import robust
from vlm_jax.config import apply_overrides, load_config
from vlm_jax.data.tokenizer import EVAL_TEMPLATE
from vlm_jax.evals.matching import MatchingEvaluator, hardest_other_class
from vlm_jax.evals.zeroshot import EvalSet
from vlm_jax.losses.itm import negative_weights, sample_hard_negatives
from vlm_jax.losses.masked import mlm_masking
from vlm_jax.models.flava import FLAVA
from vlm_jax.objectives.flava import mmm_loss
from vlm_jax.train.trainer import Setup, finalize_config, train

QUIET = ["progress=False", "batch_size=16", "evals.batch_size=128", "log_every=1", "checkpoint.every_steps=100"]
DRAWS = 20000


def _config(arg, *overrides):
    return apply_overrides(finalize_config(load_config(f"experiments/emoji_flava.py:{arg}")), [*QUIET, *overrides])


def _log_softmax64(logits):
    x = np.asarray(logits, np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _patches64(images, p):
    """[B, H, W, C] → [B, N, p·p·C] row-major patches, each standardised (MAE's norm_pix target), float64."""
    x = np.asarray(images, np.float64)
    b, h, w, c = x.shape
    out = np.stack([x[:, i:i + p, j:j + p].reshape(b, -1) for i in range(0, h, p) for j in range(0, w, p)], 1)
    return (out - out.mean(-1, keepdims=True)) / np.sqrt(out.var(-1, keepdims=True) + 1e-6)


def test_bert_masking_is_exact_and_80_10_10():
    rng = np.random.default_rng(0)
    lengths = rng.integers(0, 17, 5000)
    tokens = np.zeros((5000, 16), np.int32)
    for i, n in enumerate(lengths):
        tokens[i, :n] = rng.integers(5, 50, n)
    maskable = tokens != 0
    inputs, chosen = (np.asarray(x) for x in mlm_masking(jax.random.key(1), jnp.asarray(tokens),
                                                         jnp.asarray(maskable), 99, (5, 50), 0.15))
    expected = np.where(lengths > 0, np.maximum(1, np.round(0.15 * lengths)), 0)
    assert (chosen.sum(1) == expected).all()
    assert not (chosen & ~maskable).any() and (inputs[~chosen] == tokens[~chosen]).all()
    picked, original = inputs[chosen], tokens[chosen]
    n = len(picked)
    as_mask = np.mean(picked == 99)
    unchanged = np.mean(picked == original)  # kept (10%) plus random draws that hit the original (10% · 1/45)
    assert abs(as_mask - 0.8) < 5 * np.sqrt(0.16 / n)
    assert abs(unchanged - (0.1 + 0.1 / 45)) < 5 * np.sqrt(0.1 * 0.9 / n)
    assert ((picked == 99) | ((picked >= 5) & (picked < 50))).all()


def _unit_batch(rng, b, dim=64, common=0.6):
    """b unit vectors sharing `common` of a fixed direction: pairwise cosines ≈ common² ± a few tenths."""
    u = rng.normal(size=(b, dim))
    u[:, 0] = 0
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    z = np.sqrt(1 - common ** 2) * u
    z[:, 0] = common
    return z


def _tempered(sim, t):
    """ALBEF's negative distribution in float64: softmax over j ≠ i of t · sim[i, j]."""
    logits = t * np.asarray(sim, np.float64)
    np.fill_diagonal(logits, -np.inf)
    p = np.exp(logits - logits.max(1, keepdims=True))
    return p / p.sum(1, keepdims=True)


def _assert_follows(draws, expected):
    """Each row's empirical frequencies equal `expected` within 5 binomial sigmas; the hardest column above all."""
    n, b = draws.shape
    freq = np.stack([np.bincount(draws[:, i], minlength=b) / n for i in range(b)])
    bound = 5 * np.sqrt(expected * (1 - expected) / n) + 1e-9
    hardest = np.argmax(expected, axis=1)
    rows = np.arange(b)
    assert np.all(np.abs(freq[rows, hardest] - expected[rows, hardest]) <= bound[rows, hardest]), \
        (freq[rows, hardest], expected[rows, hardest])
    assert np.all(np.abs(freq - expected) <= bound)


@pytest.fixture(scope="module")
def realistic_sims():
    """Image and text unit vectors whose in-batch cosines lie in 0.1–0.6."""
    rng = np.random.default_rng(2)
    zimg, ztxt = _unit_batch(rng, 8), _unit_batch(rng, 8)
    sim = zimg @ ztxt.T
    assert 0.1 <= sim.min() and sim.max() <= 0.6
    return zimg.astype(np.float32), ztxt.astype(np.float32)


def test_hard_negatives_follow_the_softmax_of_t_times_cosine(realistic_sims):
    """At the contrastive logit scales t = 14 and 100, both directions' draws follow softmax(t · cos) over the other
    columns (5 sigma over 20k draws; with t left out the hardest negative is drawn ~1/6 of the time instead of
    0.2–0.5 at t = 14 and 0.6–1 at t = 100); negative_weights equals it; same-label columns are never drawn."""
    zimg, ztxt = realistic_sims
    sim = jnp.asarray(zimg @ ztxt.T)
    draw = jax.jit(jax.vmap(sample_hard_negatives, in_axes=(0, None, None)))
    for i, t in enumerate((14.0, 100.0)):
        neg_txt, neg_img = draw(jax.random.split(jax.random.key(i), DRAWS), sim, jnp.float32(t))
        s64 = zimg.astype(np.float64) @ ztxt.astype(np.float64).T
        _assert_follows(np.asarray(neg_txt), _tempered(s64, t))
        _assert_follows(np.asarray(neg_img), _tempered(s64.T, t))
        np.testing.assert_allclose(np.asarray(negative_weights(sim, t)), _tempered(s64, t), rtol=1e-4, atol=1e-7)
    labels = jnp.array([0, 1, 0, 2, 2, 3, 3, 4])
    neg_txt, neg_img = jax.vmap(lambda k: sample_hard_negatives(k, sim, 14.0, labels))(
        jax.random.split(jax.random.key(3), 500))
    for draws in (np.asarray(neg_txt), np.asarray(neg_img)):
        assert (np.asarray(labels)[draws] != np.asarray(labels)[None]).all()


def test_hardest_other_class_by_brute_force():
    rng = np.random.default_rng(3)
    img, cls = rng.normal(size=(20, 4)), rng.normal(size=(7, 4))
    labels = rng.integers(0, 7, 20)
    got = hardest_other_class(img, cls, labels)
    for i in range(20):
        scores = [(img[i] @ cls[c], c) for c in range(7) if c != labels[i]]
        assert got[i] == max(scores)[1]


class _StubEmbedder:
    """Image i is the constant i; caption c tokenises to [c]; embeddings are fixed random tables."""

    def __init__(self, img_emb, cls_emb):
        self.img_emb, self.cls_emb = img_emb, cls_emb

    def tokenize(self, captions):
        return np.array([[int(c.split()[-1].rstrip("."))] for c in captions])

    def images(self, params, images):
        return self.img_emb[images[:, 0, 0, 0].astype(int)]

    def texts(self, params, captions):
        return self.cls_emb[self.tokenize(captions)[:, 0]]


def test_matching_evaluator_by_brute_force_on_stubs():
    """Match probabilities from a known table: the positive is the own caption, random negatives are another class
    (uniform over the others, 5 sigma), hard negatives the most similar other class, and every accuracy equals the
    brute-force count over the pairs scored."""
    rng = np.random.default_rng(4)
    n, c = 4000, 5
    labels = rng.integers(0, c, n)
    table = rng.uniform(size=(n, c))
    img_emb, cls_emb = rng.normal(size=(n, 3)), rng.normal(size=(c, 3))
    images = np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None, None], (n, 1, 1, 1))
    asked = []

    def match(params, imgs, tokens):
        asked.append(tokens[:, 0].copy())
        return table[imgs[:, 0, 0, 0].astype(int), tokens[:, 0]]

    s = EvalSet(images=images, labels=labels, class_names=[str(i) for i in range(c)], class_images=None)
    out = MatchingEvaluator(_StubEmbedder(img_emb, cls_emb), match, {"s": s}, "x {}.")(None, None)
    pos, rand, hard = asked
    assert (pos == labels).all() and (rand != labels).all()
    counts = np.array([np.sum((rand == k) & (labels == lab)) for lab in range(c) for k in range(c) if k != lab])
    per = np.bincount(labels, minlength=c).repeat(c - 1) / (c - 1)
    assert np.all(np.abs(counts - per) <= 5 * np.sqrt(per * (1 - 1 / (c - 1))))
    sims = img_emb @ cls_emb.T
    for i in range(0, n, 97):
        assert hard[i] == max((sims[i, k], k) for k in range(c) if k != labels[i])[1]
    p_pos = np.array([table[i, labels[i]] for i in range(n)])
    for prefix, neg in (("", rand), ("hard_", hard)):
        p_neg = np.array([table[i, neg[i]] for i in range(n)])
        right = sum(p > 0.5 for p in p_pos) + sum(p < 0.5 for p in p_neg)
        assert out[f"s/all/{prefix}match_acc/model"] == pytest.approx(right / (2 * n), abs=1e-12)
        assert out[f"s/all/{prefix}pair_acc/model"] == pytest.approx(np.sum(p_pos > p_neg) / n, abs=1e-12)


def test_mmm_loss_is_text_ce_on_masked_tokens_plus_pixel_mse_on_masked_patches():
    """On known outputs: the mean float64 cross-entropy over the masked text positions plus the mean squared error
    over the masked patches (each patch's mean over its pixels), unmasked outputs ignored."""
    rng = np.random.default_rng(5)
    logits, text = rng.normal(size=(3, 6, 11)) * 3, rng.integers(0, 11, (3, 6))
    chosen = rng.uniform(size=(3, 6)) < 0.3
    pixels, target = rng.normal(size=(3, 5, 12)), rng.normal(size=(3, 5, 12))
    hidden = rng.uniform(size=(3, 5)) < 0.4
    assert chosen.any() and hidden.any() and not chosen.all() and not hidden.all()
    loss, m = mmm_loss(*(jnp.asarray(x) for x in (logits, text, chosen, pixels, target, hidden)))
    ce = -np.take_along_axis(_log_softmax64(logits), text[..., None], -1)[..., 0][chosen].mean()
    mse = np.mean([np.mean((pixels[b, j] - target[b, j]) ** 2) for b, j in zip(*np.nonzero(hidden))])
    assert float(m["mmm_text_loss"]) == pytest.approx(ce, rel=1e-5)
    assert float(m["mmm_image_loss"]) == pytest.approx(mse, rel=1e-5)
    assert float(loss) == pytest.approx(ce + mse, rel=1e-5)


@pytest.fixture(scope="module")
def masked_setup(data_dir):
    """A tiny FLAVA trained on MLM and MMM only (the other weights 0), initial parameters, one batch."""
    setup = Setup(_config("size=test,parts=mlm", "mesh=[('data', 1)]", "loss.mmm_weight=1.0"))
    state = setup.init_state(jax.random.key(0))
    batch = next(iter(setup.objective.train_data(8, 0, 0, 1)))
    return setup.objective, state.params, {k: jnp.asarray(v) for k, v in batch.items() if k != robust.COUNTS}


def test_itm_negatives_use_the_models_logit_scale(masked_setup, realistic_sims):
    """The objective's ITM negatives follow softmax(t · cos) with t the model's contrastive logit scale (set to 40)."""
    objective, params, _ = masked_setup
    zimg, ztxt = realistic_sims
    params = {**params, "t": jnp.asarray(np.log(40.0), jnp.float32)}
    draw = jax.jit(jax.vmap(lambda k: objective.itm_negatives(params, jnp.asarray(zimg), jnp.asarray(ztxt), None, k)))
    neg_txt, neg_img = draw(jax.random.split(jax.random.key(6), DRAWS))
    s64 = zimg.astype(np.float64) @ ztxt.astype(np.float64).T
    _assert_follows(np.asarray(neg_txt), _tempered(s64, 40.0))
    _assert_follows(np.asarray(neg_img), _tempered(s64.T, 40.0))


def test_mlm_and_mmm_losses_against_float64_references(masked_setup):
    """MLM: CE of the text tower on the masked positions. MMM: CE of the multimodal text states on the same masked
    positions plus the MSE of the predicted pixels of the hidden patches (40% of them) against the standardised
    patches; the total is their sum. Masks are the objective's own (tested above); the losses are recomputed."""
    objective, params, batch = masked_setup
    rng = jax.random.key(5)
    loss, (metrics, _) = jax.jit(lambda p, b: objective.loss(p, {}, b, rng))(params, batch)
    masks = objective.masks(rng, batch["text"], batch["image"].shape[0])
    masked, chosen, hidden = (np.asarray(masks[k]) for k in ("text", "chosen", "hidden"))
    model = objective.model()
    text = np.asarray(batch["text"])
    assert chosen.any() and not chosen[text == 0].any()
    n = hidden.shape[1]
    assert (hidden.sum(1) == round(0.4 * n)).all()
    states = model.apply({"params": params}, jnp.asarray(masked), method=FLAVA.encode_text)["states"]
    mlm = _log_softmax64(model.apply({"params": params}, states, method=FLAVA.mlm_logits))
    mlm_ref = -np.take_along_axis(mlm, text[..., None], -1)[..., 0][chosen].mean()
    text_logits, pixels = objective.mmm_predictions(params, batch["image"], jnp.asarray(hidden), jnp.asarray(masked))
    ce = -np.take_along_axis(_log_softmax64(text_logits), text[..., None], -1)[..., 0][chosen].mean()
    err = np.mean((np.asarray(pixels, np.float64) - _patches64(batch["image"], objective.patch[0])) ** 2, -1)
    mse = err[hidden].mean()
    assert float(metrics["mlm_loss"]) == pytest.approx(mlm_ref, rel=1e-5)
    assert float(metrics["mmm_text_loss"]) == pytest.approx(ce, rel=1e-5)
    assert float(metrics["mmm_image_loss"]) == pytest.approx(mse, rel=1e-5)
    assert float(loss) == pytest.approx(mlm_ref + ce + mse, rel=1e-5)
    assert float(metrics["mlm_tokens"]) == chosen.sum()


def test_mmm_prediction_never_sees_hidden_pixels(masked_setup):
    """Repainting a hidden patch leaves every MMM output unchanged; repainting a visible one changes the hidden
    patch's predicted pixels (the control)."""
    objective, params, batch = masked_setup
    image, n, p = np.asarray(batch["image"]), objective.num_patches, objective.patch[0]
    hidden = np.zeros((image.shape[0], n), bool)
    hidden[:, [1, 5, 6]] = True
    masks = objective.masks(jax.random.key(7), batch["text"], image.shape[0])
    predict = lambda im: [np.asarray(x) for x in objective.mmm_predictions(  # noqa: E731
        params, jnp.asarray(im), jnp.asarray(hidden), masks["text"])]
    base = predict(image)
    grid = image.shape[2] // p

    def repaint(patch):
        out = image.copy()
        r, c = divmod(patch, grid)
        out[:, r * p:(r + 1) * p, c * p:(c + 1) * p] = np.random.default_rng(patch).uniform(-1, 1, (p, p, 3))
        return out

    for got, want in zip(predict(repaint(5)), base):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    changed = predict(repaint(2))[1]
    assert np.abs(changed[:, 5] - base[1][:, 5]).max() > 1e-4


def _agree(got, want, ambiguous, n):
    """`got` equals the reference `want` up to the queries whose outcome a float-rounding tie could flip."""
    assert abs(got - want) <= ambiguous / n + 1e-12, (got, want, ambiguous)


def test_flava_trains_with_every_loss_and_evaluator(data_dir, tmp_path):
    """Through train(): each step's loss is the weighted sum of its five parts (MMM: text + image); zero-shot top-1,
    held-out matching (hard negatives) and masked-token accuracies equal references recomputed from the final
    parameters (probes: the contrastive objective's, tested in test_probe.py, left out)."""
    out = train(_config("size=test", "total_steps=3", "loss.mim_weight=2.0", "evals.probe_sets=[]", "mesh=[('data', 1)]"),
                tmp_path / "run")
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r.get("split") == "train"]
    assert len(steps) == 3
    for r in steps:
        parts = r["contrastive_loss"] + r["itm_loss"] + r["mlm_loss"] + r["mmm_loss"] + 2.0 * r["mim_loss"]
        assert r["loss"] == pytest.approx(parts, rel=1e-5)
        assert r["mmm_loss"] == pytest.approx(r["mmm_text_loss"] + r["mmm_image_loss"], rel=1e-5)
        assert r["mim_mask_ratio"] == 0.75
    ev, objective = out["evals"], out["setup"].objective
    params = jax.device_get(out["state"].params)
    model = objective.model()
    f = lambda method, *a: model.apply({"params": params}, *a, method=method)  # noqa: E731
    s = objective.data.eval_sets(["emoji"])["emoji/cross"]
    n, labels = len(s.labels), s.labels
    captions = objective.data.tokenize([EVAL_TEMPLATE.format(c) for c in s.class_names])
    im, cls = f(FLAVA.encode_image, jnp.asarray(s.images)), f(FLAVA.encode_text, jnp.asarray(captions))
    sims = np.asarray(im["z"], np.float64) @ np.asarray(cls["z"], np.float64).T
    top2 = np.sort(sims, 1)[:, -2:]
    _agree(ev["zeroshot/emoji/cross/all/top@1/model"], np.mean(np.argmax(sims, 1) == labels),
           np.sum(top2[:, 1] - top2[:, 0] < 1e-5), n)
    others = np.where(np.eye(len(captions), dtype=bool)[labels], -np.inf, sims)
    hard = np.argmax(others, 1)
    gap = np.sort(others, 1)[:, -1] - np.sort(others, 1)[:, -2]

    def p_match(tokens):
        tx = f(FLAVA.encode_text, jnp.asarray(tokens))
        pooled, _ = f(FLAVA.fuse, im["tokens"], tx["states"], tx["valid"])
        return np.asarray(jax.nn.softmax(f(FLAVA.itm_logits, pooled), -1)[:, 1], np.float64)

    p_pos, p_hard = p_match(captions[labels]), p_match(captions[hard])
    tie = (gap < 1e-5) | (np.abs(p_pos - 0.5) < 1e-5) | (np.abs(p_hard - 0.5) < 1e-5)
    key = "itm/emoji/cross/all/{}/model"
    _agree(ev[key.format("hard_match_acc")], np.mean(np.concatenate([p_pos > 0.5, p_hard < 0.5])), tie.sum(), n)
    _agree(ev[key.format("hard_pair_acc")], np.mean(p_pos > p_hard), np.sum(tie | (np.abs(p_pos - p_hard) < 1e-5)), n)
    # random negatives: the positives' half of match_acc is known, so the negatives' half is a whole count
    neg_right = 2 * n * ev[key.format("match_acc")] - np.sum(p_pos > 0.5)
    assert abs(neg_right - round(neg_right)) < 1e-6 + np.sum(np.abs(p_pos - 0.5) < 1e-5)
    tokens = captions[labels]
    masked, chosen = objective._fixed_mask(tokens)
    tx = f(FLAVA.encode_text, jnp.asarray(masked))
    _, fused = f(FLAVA.fuse, im["tokens"], tx["states"], tx["valid"])
    for name, logits in (("mlm", f(FLAVA.mlm_logits, tx["states"])), ("mmm", f(FLAVA.mmm_logits, fused["text"]))):
        logits = np.asarray(logits, np.float64)[chosen]
        top = np.sort(logits, -1)[:, -2:]
        _agree(ev[f"masked_text/emoji/cross/all/{name}_acc/model"], np.mean(np.argmax(logits, -1) == tokens[chosen]),
               np.sum(top[:, 1] - top[:, 0] < 1e-4), chosen.sum())


def test_accumulation_is_refused_while_itm_or_contrastive_couple_the_batch(data_dir):
    """ITM's hard negatives and the contrastive loss span the batch: grad_accum_steps > 1 is an error naming the
    keys; the masked losses alone accumulate (tests/test_accumulation.py checks their value)."""
    from vlm_jax.train.objective import get_objective

    with pytest.raises(ValueError, match=r"grad_accum_steps=2.*loss\.contrastive_weight or loss\.itm_weight"):
        get_objective(apply_overrides(finalize_config(load_config("experiments/emoji_flava.py:size=test")),
                                      ["grad_accum_steps=2"]))
    get_objective(apply_overrides(finalize_config(load_config("experiments/emoji_flava.py:size=test,parts=mlm")),
                                  ["grad_accum_steps=2"]))
