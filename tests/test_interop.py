"""Checkpoints in and out (vlm_jax.interop): HF CLIP / SigLIP and open_clip CLIP imported and run through vlm_jax's
own TwoTower, against the embeddings and logits the reference libraries computed on the same inputs
(tests/fixtures/weights, written by scripts/make_weight_fixtures.py with torch, transformers and open_clip)."""
from __future__ import annotations

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from vlm_jax.interop import hf, layout, open_clip, posemb, safetensors_io
from vlm_jax.interop.layout import ConversionError
from vlm_jax.models.two_tower import TwoTower

FIXTURES = Path(__file__).parent / "fixtures" / "weights"
READERS = {"hf_clip": hf.read, "hf_siglip": hf.read, "open_clip_clip": open_clip.read,
           "open_clip_siglip": open_clip.read}
WRITERS = {"hf": hf.write, "open_clip": open_clip.write}
TOL = dict(rtol=1e-5, atol=1e-5)


def reference(case: str) -> dict[str, np.ndarray]:
    return dict(np.load(FIXTURES / case / "reference.npz"))


def run(model: layout.Imported, image: np.ndarray, ids: np.ndarray) -> dict[str, np.ndarray]:
    """Unnormalised embeddings and logits (t · cos + b) of vlm_jax's TwoTower with the imported parameters."""
    (zimg, ztxt), aux = TwoTower(**model.fields).apply({"params": model.params}, jnp.asarray(image),
                                                         jnp.asarray(ids))
    logits = np.float64(aux["t"]) * np.asarray(zimg, np.float64) @ np.asarray(ztxt, np.float64).T
    if "b" in aux:
        logits += np.float64(aux["b"])
    return {"image_embeds": np.asarray(aux["img/unnormed"]), "text_embeds": np.asarray(aux["txt/unnormed"]),
            "logits_per_image": logits}


@pytest.fixture(scope="module", params=sorted(READERS))
def case(request):
    name = request.param
    return name, READERS[name](FIXTURES / name), reference(name)


def test_imported_models_reproduce_the_reference_libraries(case):
    name, model, ref = case
    out = run(model, ref["image"], ref["input_ids"])
    for key in ("image_embeds", "text_embeds", "logits_per_image"):
        np.testing.assert_allclose(out[key], ref[key], err_msg=f"{name}: {key}", **TOL)
    # the pooling each family uses: HF CLIP at the first eos, open_clip at the highest id, SigLIP the final position
    expected = {"hf_clip": "eos", "open_clip_clip": "argmax", "hf_siglip": "final", "open_clip_siglip": "final"}[name]
    assert model.fields["text"]["pool_type"] == expected


def test_a_new_resolution_resizes_positions_as_the_library_does(case):
    name, _, ref = case
    model = READERS[name](FIXTURES / name, image_size=48)
    pos = model.params["img"]["pos_embedding"][0]
    table = ref["pos_embed_48"] if name.endswith("siglip") else ref["pos_embed_48"][1:]  # class position apart
    np.testing.assert_allclose(pos, table, rtol=0, atol=2e-6)
    out = run(model, ref["image_48"], ref["input_ids"][:2])
    np.testing.assert_allclose(out["image_embeds"], ref["image_embeds_48"], err_msg=name, **TOL)


def test_pooling_kinds_pick_the_positions_the_libraries_pick():
    """eos / argmax / final on ids where the three differ (an id above the eos, pads after it)."""
    model = hf.read(FIXTURES / "hf_clip")
    ids = np.array([[998, 5, 999, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                    [998, 999, 7, 999, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]], np.int32)
    fields = model.fields
    (_, _), aux = TwoTower(**fields).apply({"params": model.params}, None, jnp.asarray(ids))
    hidden = np.asarray(aux["txt/encoded"])  # after the final LayerNorm
    kernel = model.params["txt"]["head"]["kernel"]
    for pool, positions in (("eos", [2, 1]), ("argmax", [2, 1]), ("final", [15, 15]), ("last", [2, 4])):
        text = dict(fields["text"], pool_type=pool)
        (_, _), got = TwoTower(**dict(fields, text=text)).apply({"params": model.params}, None, jnp.asarray(ids))
        want = np.stack([hidden[i, p] for i, p in enumerate(positions)]) @ kernel
        np.testing.assert_allclose(np.asarray(got["txt/unnormed"]), want, rtol=1e-5, atol=1e-6, err_msg=pool)


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_import_export_import_is_bit_identical(case, fmt, tmp_path):
    name, model, ref = case
    if name.endswith("siglip") and fmt == "open_clip":
        pytest.skip("open_clip's CLIP class has no attention-pooling head; its SigLIP trunks are timm models "
                    "built by name, which a model of another size has none of")
    folder = WRITERS[fmt](model, tmp_path / fmt)
    if name.startswith(fmt):  # the same format back: the same tensor names, shapes and dtypes as the original
        weights = "model.safetensors" if fmt == "hf" else open_clip.WEIGHTS
        ours, theirs = safetensors_io.read_header(folder / weights)[0], safetensors_io.read_header(
            FIXTURES / name / weights)[0]
        assert {k: (v["dtype"], v["shape"]) for k, v in ours.items()} == \
            {k: (v["dtype"], v["shape"]) for k, v in theirs.items()}
    again = (hf.read if fmt == "hf" else open_clip.read)(folder)
    a, b = layout.flat(model.params), layout.flat(again.params)
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key].dtype == b[key].dtype == np.float32, key
        np.testing.assert_array_equal(a[key], b[key], err_msg=f"{name} → {fmt} → back: {key}")
    assert again.fields == model.fields or _same_fields(again, model)
    out = run(again, ref["image"], ref["input_ids"])  # and therefore the reference library's numbers
    np.testing.assert_allclose(out["image_embeds"], ref["image_embeds"], **TOL)
    folder2 = WRITERS[fmt](again, tmp_path / (fmt + "2"))  # a second export writes the same bytes
    for f in sorted(p.name for p in folder.iterdir()):
        assert (folder / f).read_bytes() == (folder2 / f).read_bytes(), f


def _same_fields(x: layout.Imported, y: layout.Imported) -> bool:
    """Fields equal once the modules' defaults fill what one side leaves out, up to the pooling spelling a format
    forces (HF writes argmax as eos_token_id 2)."""
    a, b = layout.for_export(x).fields, layout.for_export(y).fields
    ta, tb = dict(a["text"]), dict(b["text"])
    for t in (ta, tb):
        t.pop("eos_id", None)
    return dict(a, text=ta) == dict(b, text=tb)


def test_exports_the_torch_layouts():
    """Export writes torch layouts: Linear [out, in], Conv [out, in, kh, kw], open_clip's fused in_proj."""
    model = open_clip.read(FIXTURES / "open_clip_clip")
    src = safetensors_io.read(FIXTURES / "open_clip_clip" / open_clip.WEIGHTS)
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        out = safetensors_io.read(open_clip.write(model, d) / open_clip.WEIGHTS)
    assert sorted(out) == sorted(k for k in src if k != "attn_mask")
    for key in src:
        if key in ("visual.class_embedding", "visual.positional_embedding"):
            continue  # the class position is folded into the class token on import, written back as cls + 0
        np.testing.assert_array_equal(out[key], src[key], err_msg=key)
    np.testing.assert_array_equal(out["visual.class_embedding"],
                                  src["visual.class_embedding"] + src["visual.positional_embedding"][0])
    np.testing.assert_array_equal(out["visual.positional_embedding"][1:], src["visual.positional_embedding"][1:])
    assert not out["visual.positional_embedding"][0].any()


def test_cross_format_export_keeps_the_numbers(tmp_path):
    """open_clip → HF CLIP (argmax pooling as eos_token_id 2) and HF CLIP → open_clip (eos pooling)."""
    for src_case, fmt in (("open_clip_clip", "hf"), ("hf_clip", "open_clip")):
        ref = reference(src_case)
        folder = WRITERS[fmt](READERS[src_case](FIXTURES / src_case), tmp_path / src_case)
        again = (hf.read if fmt == "hf" else open_clip.read)(folder)
        out = run(again, ref["image"], ref["input_ids"])
        for key in ("image_embeds", "text_embeds", "logits_per_image"):
            np.testing.assert_allclose(out[key], ref[key], err_msg=f"{src_case} → {fmt}: {key}", **TOL)


def test_bicubic_matrices_match_the_closed_form():
    """(Torch's own numbers are the fixtures' pos_embed_48, above.) Rows sum to 1; the same size is the identity;
    PIL's a=-0.5 kernel (antialiased path) reproduces a linear ramp wherever all four taps are inside the grid."""
    for antialias in (False, True):
        np.testing.assert_allclose(posemb.bicubic_matrix(4, 6, antialias).sum(1), 1.0, atol=1e-12)
        np.testing.assert_allclose(posemb.bicubic_matrix(5, 5, antialias), np.eye(5), atol=1e-12)
    m = posemb.bicubic_matrix(8, 12, True)
    src = (np.arange(12) + 0.5) * 8 / 12 - 0.5
    inner = (src >= 1) & (src <= 6)
    np.testing.assert_allclose((m @ np.arange(8.0))[inner], src[inner], atol=1e-12)


# ------------------------------------------------------------------------------------------ bad input

def _copy(case: str, tmp_path: Path) -> Path:
    import shutil
    return Path(shutil.copytree(FIXTURES / case, tmp_path / case))


def test_missing_unexpected_and_misshapen_tensors_are_named(tmp_path):
    folder = _copy("hf_clip", tmp_path)
    tensors = safetensors_io.read(folder / "model.safetensors")
    cases = {
        "missing": ({k: v for k, v in tensors.items() if k != "text_projection.weight"}, "text_projection.weight"),
        "unexpected": ({**tensors, "vision_model.extra.weight": np.ones(3, np.float32)}, "vision_model.extra.weight"),
        "shape": ({**tensors, "visual_projection.weight": np.ones((24, 31), np.float32)}, "(24, 32)"),
    }
    for what, (bad, named) in cases.items():
        safetensors_io.write(folder / "model.safetensors", bad)
        with pytest.raises(ConversionError, match=__import__("re").escape(named)):
            hf.read(folder)


def test_unknown_architectures_are_refused(tmp_path):
    folder = _copy("hf_clip", tmp_path)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(dict(cfg, model_type="blip")))
    with pytest.raises(ConversionError, match="model_type 'blip'.*clip"):
        hf.read(folder)
    oc = _copy("open_clip_clip", tmp_path)
    cfg = json.loads((oc / open_clip.CONFIG).read_text())
    cfg["model_cfg"]["vision_cfg"]["pool_type"] = "avg"
    (oc / open_clip.CONFIG).write_text(json.dumps(cfg))
    with pytest.raises(ConversionError, match="pool_type='avg'|pool_type='avg'|vision_cfg.pool_type"):
        open_clip.read(oc)
    cfg["model_cfg"]["vision_cfg"]["pool_type"] = "tok"
    cfg["model_cfg"]["text_cfg"]["hf_model_name"] = "roberta-base"
    (oc / open_clip.CONFIG).write_text(json.dumps(cfg))
    with pytest.raises(ConversionError, match="hf_model_name"):
        open_clip.read(oc)
    del cfg["model_cfg"]["text_cfg"]["hf_model_name"]
    cfg["model_cfg"]["vision_cfg"]["rope_theta"] = 100.0  # an option this converter has never seen
    (oc / open_clip.CONFIG).write_text(json.dumps(cfg))
    with pytest.raises(ConversionError, match=r"vision_cfg keys \['rope_theta'\] are unknown"):
        open_clip.read(oc)
    sig = _copy("open_clip_siglip", tmp_path)
    cfg = json.loads((sig / open_clip.CONFIG).read_text())
    for key, value, message in (("timm_model_name", "vit_base_patch16_siglip_gap_224", "gap_224.*not supported"),
                                ("timm_pool", "avg", "timm_pool='avg'")):
        bad = json.loads(json.dumps(cfg))
        bad["model_cfg"]["vision_cfg"][key] = value
        (sig / open_clip.CONFIG).write_text(json.dumps(bad))
        with pytest.raises(ConversionError, match=message):
            open_clip.read(sig)


def test_export_refuses_what_the_target_cannot_express(tmp_path):
    model = hf.read(FIXTURES / "hf_siglip")
    with pytest.raises(ConversionError, match="pool_type='map'.*tok"):
        open_clip.write(model, tmp_path / "x")
    clip = hf.read(FIXTURES / "hf_clip")
    bad = layout.Imported(dict(clip.fields, text=dict(clip.fields["text"], pad_mask=True)), clip.params,
                          clip.image_size, clip.text, clip.loss, clip.source)
    with pytest.raises(ConversionError, match="pad_mask=True"):
        hf.write(bad, tmp_path / "y")


def test_safetensors_round_trip_and_truncation(tmp_path):
    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array(3, np.int64),
              "c": np.zeros((0, 4), np.float32)}
    path = safetensors_io.write(tmp_path / "x.safetensors", arrays, {"format": "pt"})
    raw = path.read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    assert header_len % 8 == 0 and json.loads(raw[8:8 + header_len])["__metadata__"] == {"format": "pt"}
    back = safetensors_io.read(path)
    for k, v in arrays.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape
        np.testing.assert_array_equal(back[k], v)
    path.write_bytes(raw[:-8])
    with pytest.raises(safetensors_io.SafetensorsError, match="truncated"):
        safetensors_io.read(path)


BENCH_PYTHON = Path(__file__).parent.parent / ".bench-venv" / "bin" / "python"


@pytest.mark.skipif(not BENCH_PYTHON.exists(), reason="live check needs the optional .bench-venv (torch, "
                    "transformers, open_clip; benchmarks/requirements-open-clip.txt)")
def test_exports_load_in_the_reference_libraries(tmp_path):
    """The exported folders, loaded by transformers / open_clip themselves, give the fixtures' numbers."""
    import subprocess
    import sys  # noqa: F401
    specs = []
    for name, fmt in (("hf_clip", "hf"), ("hf_siglip", "hf"), ("open_clip_clip", "open_clip"),
                      ("open_clip_clip", "hf"), ("hf_clip", "open_clip"), ("open_clip_siglip", "hf"),
                      ("hf_siglip2", "hf")):
        folder = WRITERS[fmt]({**READERS, "hf_siglip2": hf.read}[name](FIXTURES / name), tmp_path / f"{name}_{fmt}")
        specs.append(f"{name}={fmt}:{folder}")
    script = Path(__file__).parent.parent / "scripts" / "check_exports_live.py"
    proc = subprocess.run([str(BENCH_PYTHON), str(script), *specs], capture_output=True, text=True,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert len(proc.stdout.strip().splitlines()) == len(specs)


@pytest.mark.parametrize("layout_name", ["siglip.npz", "siglip_scanned.npz"])
def test_big_vision_siglip_npz_reproduces_the_same_model_in_transformers(layout_name, tmp_path):
    """The hf_siglip weights in big_vision's layout (per-layer and scanned), imported: transformers' numbers; and
    exported to HF, the same tensors as the HF checkpoint itself."""
    from vlm_jax.interop import big_vision
    ref = reference("hf_siglip")
    model = big_vision.read(FIXTURES / "big_vision_siglip" / layout_name)
    out = run(model, ref["image"], ref["input_ids"])
    for key in ("image_embeds", "text_embeds", "logits_per_image"):
        np.testing.assert_allclose(out[key], ref[key], err_msg=key, **TOL)
    exported = safetensors_io.read(hf.write(model, tmp_path / "hf") / "model.safetensors")
    original = safetensors_io.read(FIXTURES / "hf_siglip" / "model.safetensors")
    assert sorted(exported) == sorted(original)
    for key in original:
        assert exported[key].shape == original[key].shape, key
        np.testing.assert_array_equal(exported[key], original[key], err_msg=key)


def test_big_vision_at_a_new_resolution_resamples_as_big_vision_does():
    """big_vision's resample_posemb is scipy.ndimage.zoom(order=1) on the square grid: scipy itself is the
    reference here (it ships with jax)."""
    import scipy.ndimage
    from vlm_jax.interop import big_vision
    with np.load(FIXTURES / "big_vision_siglip" / "siglip.npz") as npz:
        table = npz["params/img/pos_embedding"]
    model = big_vision.read(FIXTURES / "big_vision_siglip" / "siglip.npz")
    p = model.fields["image"]["patch_size"][0]
    grid = int(round(np.sqrt(table.shape[1])))
    for size in (p * (grid + 2), p * (grid - 1)):
        moved = big_vision.read(FIXTURES / "big_vision_siglip" / "siglip_scanned.npz", image_size=size)
        zoom = (size // p) / grid
        want = scipy.ndimage.zoom(table.reshape(grid, grid, -1), (zoom, zoom, 1), order=1).reshape(1, -1, table.shape[-1])
        assert moved.image_size == size
        np.testing.assert_allclose(moved.params["img"]["pos_embedding"], want, rtol=0, atol=1e-7, err_msg=str(size))
    with pytest.raises(ConversionError, match="not a multiple of the patch size"):
        big_vision.read(FIXTURES / "big_vision_siglip" / "siglip.npz", image_size=p * grid + 1)


def test_big_vision_unknown_and_missing_keys_are_named(tmp_path):
    from vlm_jax.interop import big_vision
    with np.load(FIXTURES / "big_vision_siglip" / "siglip.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    np.savez(tmp_path / "extra.npz", **arrays, **{"params/img/extra/kernel": np.ones(2, np.float32)})
    with pytest.raises(ConversionError, match="img/extra/kernel"):
        big_vision.read(tmp_path / "extra.npz")
    del arrays["params/txt/head/bias"]
    np.savez(tmp_path / "missing.npz", **arrays)
    with pytest.raises(ConversionError, match="missing tensor 'txt/head/bias'"):
        big_vision.read(tmp_path / "missing.npz")


def test_scanned_towers_export_like_per_layer_ones(tmp_path):
    """A model built with scan=True (stacked blocks, as the web-scale recipes train) exports to open_clip; the
    import of that export gives the same outputs as the scanned model."""
    import jax

    image = dict(width=32, depth=2, mlp_dim=64, num_heads=4, patch_size=(8, 8), pool_type="tok", ln_pre=True,
                 act="gelu", ln_eps=1e-5, head_bias=False, scan=True)
    text = dict(vocab_size=50, width=32, depth=2, mlp_dim=64, num_heads=4, max_len=16, pool_type="argmax",
                pad_mask=False, act="gelu", ln_eps=1e-5, head_bias=False, scan=True)
    fields = dict(image=image, text=text, embed_dim=24)
    ids = np.array([[1, 5, 7, 49, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]] * 2, np.int32)
    imgs = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    variables = TwoTower(**fields).init(jax.random.key(0), jnp.asarray(imgs), jnp.asarray(ids))
    params = jax.tree.map(np.asarray, __import__("flax").linen.unbox(variables["params"]))
    assert "encoderblock" in params["img"]["Transformer"]
    model = layout.Imported(fields, params, 32, dict(max_len=16, pad_id=0, eos_id=None, bos_id=None), "clip", "test")
    again = open_clip.read(open_clip.write(model, tmp_path / "oc"))
    assert again.fields["image"]["depth"] == 2 and "encoderblock_1" in again.params["img"]["Transformer"]
    want = run(model, imgs, ids)
    got = run(again, imgs, ids)
    for key in ("image_embeds", "text_embeds"):
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-6, err_msg=key)


def _naflex_batch(ref: dict[str, np.ndarray], suffix: str = "") -> dict[str, np.ndarray]:
    """transformers' NaFlex inputs as a vlm_jax NaFlex batch: the same patch pixels (mean = std = 0.5 makes
    transformers' normalised pixels vlm_jax's [-1, 1] ones), each patch's (row, column) from the grid shapes."""
    shapes, mask = ref["spatial_shapes" + suffix], ref["pixel_attention_mask" + suffix].astype(bool)
    n, length = mask.shape
    positions = np.zeros((n, length, 2), np.int32)
    for i, (h, w) in enumerate(shapes):
        idx = np.arange(h * w)
        positions[i, :h * w, 0], positions[i, :h * w, 1] = idx // w, idx % w
    return dict(patches=ref["pixel_values" + suffix], positions=positions, mask=mask, grid=shapes.astype(np.int32))


def test_siglip2_naflex_reproduces_transformers():
    """HF Siglip2Model (NaFlex): images of four aspect ratios, padded to a 20-patch budget by transformers' own
    processor: embeddings and logits within 1e-5; the per-image position resize equals torch's antialiased
    bilinear F.interpolate; padding changes no output."""
    from vlm_jax.models import naflex
    ref = reference("hf_siglip2")
    model = hf.read(FIXTURES / "hf_siglip2")
    assert model.fields["image"]["posemb_grid"] == 4 and model.image_size == 32
    batch = _naflex_batch(ref)
    (zimg, _), aux = TwoTower(**model.fields).apply({"params": model.params}, batch, jnp.asarray(ref["input_ids"]))
    np.testing.assert_allclose(np.asarray(aux["img/unnormed"]), ref["image_embeds"], **TOL)
    np.testing.assert_allclose(np.asarray(aux["txt/unnormed"]), ref["text_embeds"], **TOL)
    logits = np.float64(aux["t"]) * np.asarray(zimg, np.float64) @ np.asarray(
        l2n(ref["text_embeds"]), np.float64).T + np.float64(aux["b"])
    np.testing.assert_allclose(logits, ref["logits_per_image"], **TOL)
    table = model.params["img"]["pos_embedding"][0].reshape(4, 4, -1)
    resized = np.asarray(naflex.resized_posemb(jnp.asarray(table), batch["positions"], batch["grid"]))
    for i, (h, w) in enumerate(batch["grid"]):
        np.testing.assert_allclose(resized[i, :h * w], ref["pos_embed_resized"][i, :h * w], rtol=0, atol=1e-6)
    # padding: other pixels and positions in the padded slots change nothing
    noisy = dict(batch, patches=np.where(batch["mask"][..., None], batch["patches"], 7.0).astype(np.float32),
                 positions=np.where(batch["mask"][..., None], batch["positions"], 3).astype(np.int32))
    (_, _), aux2 = TwoTower(**model.fields).apply({"params": model.params}, noisy, None)
    np.testing.assert_array_equal(np.asarray(aux2["img/unnormed"]), np.asarray(aux["img/unnormed"]))


def l2n(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_siglip2_export_round_trips_and_matches_the_original_layout(tmp_path):
    """Siglip2Model → vlm_jax → Siglip2Model: the original's tensor names, shapes and dtypes, the same parameters
    back bit for bit, and byte-identical on a second export."""
    model = hf.read(FIXTURES / "hf_siglip2")
    folder = hf.write(model, tmp_path / "a")
    ours, theirs = safetensors_io.read_header(folder / "model.safetensors")[0], safetensors_io.read_header(
        FIXTURES / "hf_siglip2" / "model.safetensors")[0]
    assert {k: (v["dtype"], v["shape"]) for k, v in ours.items()} == \
        {k: (v["dtype"], v["shape"]) for k, v in theirs.items()}
    assert json.loads((folder / "config.json").read_text())["vision_config"]["num_patches"] == 16
    again = hf.read(folder)
    a, b = layout.flat(model.params), layout.flat(again.params)
    assert sorted(a) == sorted(b)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    folder2 = hf.write(again, tmp_path / "b")
    for f in sorted(p.name for p in folder.iterdir()):
        assert (folder / f).read_bytes() == (folder2 / f).read_bytes(), f
