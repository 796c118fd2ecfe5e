"""`python -m vlm_jax.tools.convert`: a checkpoint folder becomes a run that `vlm_jax.load()` opens (with the
checkpoint's own tokenizer) and `init_from` reads; a run exports back to the library's layout."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import vlm_jax
from vlm_jax.interop import hf, layout, open_clip
from vlm_jax.tools import convert

FIXTURES = Path(__file__).parent / "fixtures" / "weights"
CASES = {"hf_clip": "hf", "hf_siglip": "hf", "open_clip_clip": "open_clip"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("converted")
    out = {}
    for case, fmt in CASES.items():
        assert convert.main(["--from", fmt, "--in", str(FIXTURES / case), "--out", str(root / case)]) == 0
        out[case] = root / case
    return out


@pytest.mark.parametrize("case", sorted(CASES))
def test_converted_run_embeds_like_the_library_with_its_own_tokenizer(runs, case):
    ref = dict(np.load(FIXTURES / case / "reference.npz"))
    run = vlm_jax.load(runs[case])
    want = ref["image_embeds"] / np.linalg.norm(ref["image_embeds"], axis=1, keepdims=True)
    np.testing.assert_allclose(run.embed_images(ref["image"]), want, atol=1e-5)
    texts = json.loads((FIXTURES / case / "token_texts.json").read_text())
    np.testing.assert_array_equal(run.objective.data.tokenize(texts), ref["token_ids"])  # the library's ids
    # text embeddings of strings = the imported model on the library's ids (parity of those: test_interop.py)
    model = (hf.read if CASES[case] == "hf" else open_clip.read)(FIXTURES / case)
    direct = _text_embeddings(model, ref["token_ids"])
    np.testing.assert_allclose(run.embed_texts(texts), direct, atol=1e-5)
    logits = run.logits(run.embed_images(ref["image"][:2]), run.embed_texts(texts[:3]))
    scale = np.exp(np.float64(model.params["t"]))
    expected = scale * want[:2].astype(np.float64) @ direct[:3].T.astype(np.float64) + \
        (np.float64(model.params["b"]) if "b" in model.params else 0.0)
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)


def _text_embeddings(model: layout.Imported, ids: np.ndarray) -> np.ndarray:
    import jax.numpy as jnp

    from vlm_jax.models.two_tower import TwoTower
    (_, ztxt), _ = TwoTower(**model.fields).apply({"params": model.params}, None, jnp.asarray(ids))
    return np.asarray(ztxt)


@pytest.mark.parametrize("case", ["hf_clip", "open_clip_clip"])
def test_export_of_a_converted_run_reimports_bit_identically(runs, case, tmp_path):
    fmt = CASES[case]
    assert convert.main(["--to", fmt, "--in", str(runs[case]), "--out", str(tmp_path / "exp")]) == 0
    reader = hf.read if fmt == "hf" else open_clip.read
    again, first = reader(tmp_path / "exp"), reader(FIXTURES / case)
    a, b = layout.flat(first.params), layout.flat(again.params)
    assert sorted(a) == sorted(b)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_init_from_reads_a_converted_run(runs):
    """A LiT-style start: init_from.workdir = the converted run, only the image tower copied."""
    import ml_collections

    from vlm_jax.train import init_from

    init = ml_collections.ConfigDict(dict(init_from.DEFAULTS, workdir=str(runs["hf_siglip"])))
    source, origin = init_from.load_source(init)
    want = layout.flat(hf.read(FIXTURES / "hf_siglip").params)
    got = layout.flat(source)
    assert sorted(got) == sorted(want) and str(runs["hf_siglip"]) in origin
    for key in want:
        np.testing.assert_array_equal(np.asarray(got[key]), want[key], err_msg=key)


def test_bad_input_is_refused_with_the_reason(runs, tmp_path, capsys):
    run = vlm_jax.load(runs["hf_clip"])
    with pytest.raises(ValueError, match="no training data.*init_from.workdir"):
        run.objective.data.train(8, 0, 0, 1)
    assert convert.main(["--from", "hf", "--in", str(FIXTURES / "open_clip_clip"), "--out", str(tmp_path / "x")]) == 2
    assert "no config.json" in capsys.readouterr().err
    assert convert.main(["--from", "hf", "--in", str(FIXTURES / "hf_clip"), "--out", str(runs["hf_clip"])]) == 2
    assert "already holds a run" in capsys.readouterr().err
    import shutil

    import ml_collections

    from vlm_jax.data.checkpoint_text import CheckpointText
    bare = Path(shutil.copytree(FIXTURES / "hf_clip", tmp_path / "bare"))
    (bare / "tokenizer.json").unlink()
    assert convert.main(["--from", "hf", "--in", str(bare), "--out", str(tmp_path / "bare_run")]) == 0
    with pytest.raises(ValueError, match="has no tokenizer.*--tokenizer FILE"):
        vlm_jax.load(tmp_path / "bare_run").embed_texts(["a cat"])
    cfg = json.loads((runs["hf_clip"] / "config.json").read_text())["data"]
    with pytest.raises(ValueError, match="1000 ids but the text tower's vocabulary has 500"):
        CheckpointText(ml_collections.ConfigDict(dict(cfg, vocab_size=500)))
