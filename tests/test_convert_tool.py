"""`python -m vlm_jax.tools.convert`: a checkpoint folder becomes a run that `vlm_jax.load()` opens (with the
checkpoint's own tokenizer) and `init_from` reads; a run exports back to the library's layout."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import vlm_jax
from vlm_jax.interop import hf, layout, open_clip
from vlm_jax.interop.layout import ConversionError
from vlm_jax.tools import convert
from vlm_jax.train.trainer import finalize_config

FIXTURES = Path(__file__).parent / "fixtures" / "weights"
CASES = {"hf_clip": "hf", "hf_siglip": "hf", "open_clip_clip": "open_clip", "open_clip_siglip": "open_clip"}


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


def test_a_converted_siglip2_run_embeds_square_images_at_the_full_grid(tmp_path):
    """Siglip2 (NaFlex) converted: vlm_jax.load() embeds a square image at the grid's size through the
    fixed-resolution path; equal to the NaFlex path (parity with transformers: test_interop.py) on the same
    image as a full-budget patch grid. Its tokenizer gives the library's ids."""
    import jax.numpy as jnp

    from vlm_jax.models.two_tower import TwoTower
    assert convert.main(["--from", "hf", "--in", str(FIXTURES / "hf_siglip2"), "--out", str(tmp_path / "s2")]) == 0
    run = vlm_jax.load(tmp_path / "s2")
    ref = dict(np.load(FIXTURES / "hf_siglip2" / "reference.npz"))
    texts = json.loads((FIXTURES / "hf_siglip2" / "token_texts.json").read_text())
    np.testing.assert_array_equal(run.objective.data.tokenize(texts), ref["token_ids"])
    image = ref["image_2"].astype(np.float32) / 127.5 - 1.0  # 32 x 32: the 4 x 4 grid at patch 8
    model = hf.read(FIXTURES / "hf_siglip2")
    patches = image.reshape(4, 8, 4, 8, 3).transpose(0, 2, 1, 3, 4).reshape(1, 16, 192)
    rc = np.stack(np.meshgrid(np.arange(4), np.arange(4), indexing="ij"), -1).reshape(1, 16, 2)
    batch = dict(patches=patches, positions=rc.astype(np.int32), mask=np.ones((1, 16), bool),
                 grid=np.array([[4, 4]], np.int32))
    (zimg, _), _ = TwoTower(**model.fields).apply({"params": model.params}, batch, None)
    np.testing.assert_allclose(run.embed_images(image[None]), np.asarray(zimg), atol=2e-6)


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


BENCH_PYTHON = Path(__file__).parent.parent / ".bench-venv" / "bin" / "python"


@pytest.mark.skipif(not (BENCH_PYTHON.parent / "clip_benchmark").exists(),
                    reason="needs the optional .bench-venv with clip_benchmark (benchmarks/requirements-open-clip.txt)")
def test_clip_benchmark_scores_an_exported_vlm_jax_model_as_vlm_jax_does(tmp_path):
    """A model vlm_jax trained (open_clip-holdable towers, its own SentencePiece tokenizer), exported to open_clip
    and evaluated by clip_benchmark on a dataset in clip_benchmark's webdataset format: the same zero-shot top-1
    as vlm_jax's own classifier with the same template (to 0.1 points)."""
    import io
    import subprocess
    import tarfile

    from PIL import Image

    from vlm_jax.config import apply_overrides, load_config
    from vlm_jax.data import fashion_mnist
    from vlm_jax.train.trainer import train

    config = apply_overrides(finalize_config(load_config("experiments/emoji_two_tower.py:size=test,arch=open_clip,steps=150,batch=64")),
                             ["evals.sets=[]", "mesh=[('data', 1)]"])
    train(config, tmp_path / "run")
    assert convert.main(["--to", "open_clip", "--in", str(tmp_path / "run"), "--out", str(tmp_path / "oc")]) == 0

    images, labels = fashion_mnist.load_fashion_mnist("test")
    images, labels = fashion_mnist.to_rgb(images[:1000], 32), labels[:1000]
    names = list(fashion_mnist.CLASS_NAMES)
    root = tmp_path / "wds_fashion"
    (root / "test").mkdir(parents=True)
    (root / "test" / "nshards.txt").write_text("1\n")
    (root / "classnames.txt").write_text("\n".join(names) + "\n")
    (root / "zeroshot_classification_templates.txt").write_text("an emoji of {c}.\n")
    with tarfile.open(root / "test" / "0.tar", "w") as tar:
        for i, (img, label) in enumerate(zip(images, labels)):
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="PNG")
            for ext, data in (("png", buf.getvalue()), ("cls", str(int(label)).encode())):
                info = tarfile.TarInfo(f"{i:06d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    out = tmp_path / "result.json"
    proc = subprocess.run([str(BENCH_PYTHON.parent / "clip_benchmark"), "eval", "--dataset", "wds/fashion",
                           "--dataset_root", str(root), "--model_type", "open_clip", "--model",
                           f"local-dir:{tmp_path / 'oc'}", "--pretrained", "", "--output", str(out),
                           "--batch_size", "100", "--num_workers", "0", "--task", "zeroshot_classification",
                           "--no_amp"],  # clip_benchmark's default AMP runs the towers in bfloat16 on a CPU
                          capture_output=True, text=True, timeout=900,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    theirs = 100 * json.loads(out.read_text())["metrics"]["acc1"]

    run = vlm_jax.load(tmp_path / "run")
    pred = run.classify(images, names, k=1, templates=["an emoji of {}."]).matrix.argmax(1)
    ours = 100 * float(np.mean(pred == labels))
    # a tiny model trained 150 steps on emoji is near chance on Fashion-MNIST; the point is that every one of the
    # 1000 predictions agrees, and they are not one constant class
    assert len(np.unique(pred)) >= 3, np.bincount(pred)
    assert abs(ours - theirs) <= 0.1, (ours, theirs)
    print(f"clip_benchmark acc1 {theirs:.1f}, vlm_jax {ours:.1f}")


def test_spm_tokenizer_json_tokenizes_like_vlm_jax(tmp_path):
    """vlm_jax's SentencePiece tokenizer written as tokenizer.json, read back by the `tokenizers` engine: the same
    ids (pieces, EOS, 0 padding, truncation keeping EOS) on captions and hard strings."""
    import emoji

    from vlm_jax.data.checkpoint_tokenizers import CheckpointTokenizer
    from vlm_jax.data.tokenizer import Tokenizer, captions, write_tokenizer
    from vlm_jax.interop import spm_json

    names = [v["en"].strip(":").replace("_", " ") for v in list(emoji.EMOJI_DATA.values())[:1500]]
    model = write_tokenizer(captions(names[:1000]), tmp_path / "t.model", vocab_size=1024)
    texts = captions(names[1000:1300]) + json.loads((FIXTURES / "hf_clip" / "token_texts.json").read_text()) + \
        ["  double  spaces ", "Tab\there", "ﬁ ligature ①", "x" * 100, "12,345.67 €", "Ǆ ǅ", "ÀÉÎÕÜ"]
    spm_json.write(model, tmp_path / "hf", 16)
    want = Tokenizer(model).encode(texts, 16)
    got = CheckpointTokenizer("hf_json", tmp_path / "hf" / "tokenizer.json", 16).encode(texts)
    bad = [texts[i] for i in range(len(texts)) if not (want[i] == got[i]).all()]
    assert not bad, bad[:5]


def test_a_trained_run_exports_to_open_clip_with_its_tokenizer(tmp_path):
    """Through train() and the tool: an arch=open_clip emoji run exports; the export, imported, embeds images and
    texts as the run does (its last-token pooling written as EOS pooling, its tokenizer as tokenizer.json); HF CLIP
    and the default (MAP-pooled) architecture are refused, naming why."""
    from vlm_jax.config import apply_overrides, load_config
    from vlm_jax.data.checkpoint_tokenizers import CheckpointTokenizer
    from vlm_jax.train.trainer import train

    config = apply_overrides(finalize_config(load_config("experiments/emoji_two_tower.py:size=test,arch=open_clip,steps=2,batch=16")),
                             ["evals.sets=[]", "mesh=[('data', 1)]"])
    train(config, tmp_path / "run")
    assert convert.main(["--to", "open_clip", "--in", str(tmp_path / "run"), "--out", str(tmp_path / "oc")]) == 0
    cfg = json.loads((tmp_path / "oc" / open_clip.CONFIG).read_text())["model_cfg"]["text_cfg"]
    assert cfg["pool_type"] == "eos" and cfg["hf_tokenizer_name"]
    run = vlm_jax.load(tmp_path / "run")
    texts = ["an emoji of a cat.", "a picture of grinning face", "", "an icon of a red apple on a very long table"]
    tokenizer = CheckpointTokenizer("hf_json", tmp_path / "oc" / "tokenizer.json", 16)
    ids = tokenizer.encode(texts)
    np.testing.assert_array_equal(ids, run.objective.data.tokenize(texts))
    model = open_clip.read(tmp_path / "oc")
    images = np.random.default_rng(0).uniform(-1, 1, (3, 32, 32, 3)).astype(np.float32)
    import jax.numpy as jnp

    from vlm_jax.models.two_tower import TwoTower
    (zimg, ztxt), _ = TwoTower(**model.fields).apply({"params": model.params}, jnp.asarray(images), jnp.asarray(ids))
    np.testing.assert_allclose(np.asarray(zimg), run.embed_images(images), atol=1e-5)
    np.testing.assert_allclose(np.asarray(ztxt), run.embed_texts(texts), atol=1e-5)
    with pytest.raises(ConversionError, match="eos_token_id 2"):
        convert.export_run("hf", tmp_path / "run", tmp_path / "hf")


def test_the_default_architecture_is_refused_naming_the_field(tmp_path):
    """The default emoji towers (MAP pooling, a bidirectional pad-masked text tower in the SigLIP-like variant)
    have no exact open_clip counterpart: export names the field instead of writing something else."""
    import jax
    import jax.numpy as jnp
    from flax import linen as nn

    from vlm_jax.config import load_config
    from vlm_jax.models.two_tower import TwoTower

    m = load_config("experiments/emoji_two_tower.py:size=test").model
    fields = dict(image=dict(m.image), text=dict(m.text, vocab_size=50), embed_dim=m.embed_dim)
    params = nn.unbox(TwoTower(**fields).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                                              jnp.zeros((1, 16), jnp.int32))["params"])
    model = layout.Imported(fields, jax.tree.map(np.asarray, params), 32,
                            dict(max_len=16, pad_id=0, eos_id=2, bos_id=None), "clip", "vlm_jax")
    with pytest.raises(ConversionError, match="pool_type='map'"):
        open_clip.write(model, tmp_path / "oc")
    tok = dict(fields, image=dict(fields["image"], pool_type="tok", ln_pre=True, act="gelu", head_bias=False),
               text=dict(fields["text"], causal=False, act="gelu", head_bias=False))
    with pytest.raises(ConversionError, match="pad_mask=True"):
        open_clip.write(layout.Imported(tok, model.params, 32, model.text, "clip", "vlm_jax"), tmp_path / "oc2")


def test_a_wordpiece_tokenizer_json_gives_the_reference_ids():
    """WordPiece from a checkpoint's tokenizer.json (the packaged MiniLM's) through the checkpoint tokenizer equals
    vlm_jax's own WordPiece implementation (itself checked against HF tokenizers in test_lit.py) on the hard
    strings, framed [CLS] … [SEP] and padded."""
    from vlm_jax.data.checkpoint_tokenizers import CheckpointTokenizer
    from vlm_jax.data.wordpiece import WordPieceTokenizer
    from vlm_jax.pretrained import minilm_dir
    texts = json.loads((FIXTURES / "hf_clip" / "token_texts.json").read_text())
    ours = CheckpointTokenizer("hf_json", minilm_dir() / "tokenizer.json", 16).encode(texts)
    np.testing.assert_array_equal(ours, WordPieceTokenizer(minilm_dir() / "vocab.txt").encode(texts, 16))
    assert (ours[:, 0] == 101).all() and (ours == 102).sum(1).tolist() == [1] * len(texts)
