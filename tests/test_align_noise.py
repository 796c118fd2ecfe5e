"""ALIGN's loss and the caption-noise data option: label-smoothed InfoNCE against a float64 cross-entropy with
smoothed targets; `data.caption_noise` replaces the expected share of captions with another concept's name and
leaves every other draw (images, augmentation, templates) as the clean stream's."""
from __future__ import annotations

import ml_collections
import numpy as np
import pytest

from vlm_jax.losses.contrastive import infonce_loss


def test_label_smoothed_infonce_against_float64():
    rng = np.random.default_rng(0)
    b, d, t, eps = 7, 5, 3.0, 0.1
    zi, zt = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in rng.normal(size=(2, b, d)))
    logits = t * zi @ zt.T
    q = (1 - eps) * np.eye(b) + eps / b  # targets: (1 − ε) on the pair, ε spread over the batch

    def ce(z):
        z = z - z.max(1, keepdims=True)
        return -np.mean(np.sum(q * (z - np.log(np.exp(z).sum(1, keepdims=True))), 1))

    loss, _ = infonce_loss(zi.astype(np.float32), zt.astype(np.float32), np.float32(t), 0.1)
    np.testing.assert_allclose(float(loss), 0.5 * (ce(logits) + ce(logits.T)), rtol=1e-5)
    plain, _ = infonce_loss(zi.astype(np.float32), zt.astype(np.float32), np.float32(t))
    assert float(plain) != pytest.approx(float(loss), rel=1e-4)


def _stream(data_dir: str, noise: float):
    from vlm_jax.data import image_text

    cfg = ml_collections.ConfigDict(dict(name="emoji", data_dir=data_dir, num_threads=0, caption_noise=noise,
                                         train_styles=("noto", "twitter")))
    data = image_text.get(cfg)
    return data, data.train(256, 3, 0, 1)


def test_caption_noise_replaces_the_expected_share_with_other_concepts(data_dir):
    from vlm_jax.data import emoji_tfds
    from vlm_jax.data.tokenizer import TRAIN_TEMPLATES

    data, clean = _stream(data_dir, 0.0)
    _, noisy = _stream(data_dir, 0.3)
    names = dict(zip(emoji_tfds.load_split(data_dir, "train", 64)["concept"].tolist(),
                     emoji_tfds.load_split(data_dir, "train", 64)["name"]))
    # every (template, name) caption as the model sees it (tokens, cut at text_len) → the names giving it
    captions: dict[tuple[str, tuple[int, ...]], set[str]] = {}
    for template in TRAIN_TEMPLATES:
        tokens = data.tokenize([template.format(n) for n in names.values()])
        for n, row in zip(names.values(), tokens):
            captions.setdefault((template, tuple(row.tolist())), set()).add(n)
    changed, total = 0, 0
    for _, a, b in zip(range(4), clean, noisy):
        np.testing.assert_array_equal(a["image"], b["image"])  # the noise draw comes after every other draw
        np.testing.assert_array_equal(a["concept"], b["concept"])
        rows = np.flatnonzero(np.any(a["text"] != b["text"], axis=1))
        changed, total = changed + len(rows), total + len(a["text"])
        for row in rows:
            own = names[int(a["concept"][row])]
            # the clean caption is a template filled with its own name; the noisy one the same template refilled
            # with another concept's name
            template = next(t for t in TRAIN_TEMPLATES if own in captions.get((t, tuple(a["text"][row].tolist())), ()))
            assert captions.get((template, tuple(b["text"][row].tolist())), set()) - {own}, row
    share, sd = changed / total, np.sqrt(0.3 * 0.7 / total)
    assert abs(share - 0.3) < 4 * sd, share  # 1,024 examples: within 4 standard deviations of 30%
    with pytest.raises(ValueError, match="caption_noise"):
        _stream(data_dir, 1.0)


def test_align_with_caption_noise_through_train(tmp_path):
    """ALIGN's recipe on noisy captions through train(): the method's settings reach the data, the loss and the
    model (its temperature starts at 1, not CLIP's 1/0.07)."""
    import json

    from vlm_jax.config import apply_overrides, load_config
    from vlm_jax.train.trainer import finalize_config, train

    config = apply_overrides(finalize_config(load_config(
        "experiments/emoji_contrastive_family.py:method=align,noise=0.5,size=test,steps=2,batch=16")),
        ["mesh=[('data', 1)]", "evals.sets=[]", "checkpoint.every_steps=2"])
    assert config.loss.contrastive_smoothing == 0.1 and config.data.caption_noise == 0.5
    train(config, tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    first = next(r for r in rows if r.get("split") == "train")
    assert first["t"] == pytest.approx(1.0, rel=1e-6)  # ALIGN's temperature starts at 1
    from vlm_jax.train.trainer import Setup

    with pytest.raises(ValueError, match="contrastive_smoothing"):  # OTTER's loss is its own: refused, not ignored
        Setup(apply_overrides(finalize_config(load_config(
            "experiments/emoji_contrastive_family.py:method=otter,size=test,steps=2,batch=16")),
            ["loss.contrastive_smoothing=0.1"]))


def test_caption_rewrites_use_only_the_concepts_other_names(data_dir):
    """LaCLIP's rewrites: at rate 1 every caption of a concept with other names is its template refilled with one of
    them (tokens as the model sees them), never with its own name; images and concepts as the clean stream's."""
    from vlm_jax.data import emoji_tfds, image_text
    from vlm_jax.data.rewrites import rewrites_of
    from vlm_jax.data.tokenizer import TRAIN_TEMPLATES

    assert "western sahara" in rewrites_of("🇪🇭", "flag: Western Sahara")
    assert "kangaroo" not in rewrites_of("🦘", "kangaroo")
    base = dict(name="emoji", data_dir=data_dir, num_threads=0, train_styles=("noto",))
    data = image_text.get(ml_collections.ConfigDict(base))
    clean = data.train(256, 5, 0, 1)
    rewritten = image_text.get(ml_collections.ConfigDict(dict(base, caption_rewrites=1.0))).train(256, 5, 0, 1)
    split = emoji_tfds.load_split(data_dir, "train", 64)
    info = {int(c): (n, e) for c, n, e in zip(split["concept"], split["name"], split["emoji"])}
    checked = 0
    for _, a, b in zip(range(2), clean, rewritten):
        np.testing.assert_array_equal(a["image"], b["image"])
        for row in range(len(a["text"])):
            name, char = info[int(a["concept"][row])]
            pool = rewrites_of(char, name)
            template = next(t for t in TRAIN_TEMPLATES
                            if np.array_equal(data.tokenize([t.format(name)])[0], a["text"][row]))
            if not pool:
                np.testing.assert_array_equal(a["text"][row], b["text"][row])
                continue
            allowed = data.tokenize([template.format(r) for r in pool])
            assert any(np.array_equal(b["text"][row], x) for x in allowed), (name, pool)
            checked += 1
    assert checked > 100
