"""NaFlex training: the batched pipeline against an independent PIL patchify, budgets drawn per batch (equal on
every host, restored on resume), native-aspect Tux Paint stamps, and a run through `python -m vlm_jax.main`
that evaluates at every eval budget; objectives that read image tokens refuse NaFlex."""
from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlm_jax.data import augment, pipeline
from vlm_jax.data import naflex as prep
from vlm_jax.data import tuxpaint

ROOT = Path(__file__).resolve().parents[1]


def _pil_patches(image: np.ndarray, patch: int, budget: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Independent reference: the largest grid by brute force over every (rows, cols) whose scale is common to both
    sides, PIL bilinear resize, then patches cut in row-major order with a Python loop."""
    h, w = image.shape[:2]
    best, best_scale = (1, 1), 0.0
    for rows in range(1, budget + 1):
        for cols in range(1, budget // rows + 1):
            # some scale s gives ceil(h s / p) = rows and ceil(w s / p) = cols: the intervals of s overlap
            lo = max((rows - 1) * patch / h, (cols - 1) * patch / w)
            hi = min(rows * patch / h, cols * patch / w, 100.0)
            if lo < hi and hi > best_scale:
                best, best_scale = (rows, cols), hi
    rows, cols = best
    img = np.asarray(Image.fromarray(image).resize((cols * patch, rows * patch), Image.Resampling.BILINEAR))
    cells = [img[r * patch:(r + 1) * patch, c * patch:(c + 1) * patch].reshape(-1)
             for r in range(rows) for c in range(cols)]
    return np.stack(cells), best


def _images(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    shapes = [(64, 64), (64, 22), (17, 64), (40, 61), (5, 64), (64, 9)]
    return [rng.integers(0, 256, (*shapes[i % len(shapes)], 3), dtype=np.uint8) for i in range(n)]


def test_batched_patches_equal_an_independent_pil_patchify():
    """No augmentation: the pipeline's NaFlex batch (grids found by a brute-force search, PIL bilinear, patches cut
    in a loop) within one grey level, padding zero and masked, positions row-major."""
    images, patch, budget = _images(6), 8, 20
    elements = [{"image": im, "augment": augment.draw(np.random.default_rng(i), {}, im.shape), "k": np.int32(i)}
                for i, im in enumerate(images)]
    got = prep.collate(elements, {}, patch, budget)
    assert got["k"].tolist() == list(range(6))
    nf = got["image"]
    for i, im in enumerate(images):
        want, (rows, cols) = _pil_patches(im, patch, budget)
        n = rows * cols
        assert tuple(nf["grid"][i]) == (rows, cols)
        assert nf["mask"][i].tolist() == [True] * n + [False] * (budget - n)
        assert np.abs(nf["patches"][i, :n].astype(int) - want.astype(int)).max() <= 1, i
        assert not nf["patches"][i, n:].any()
        assert [tuple(p) for p in nf["positions"][i, :n]] == [(r, c) for r in range(rows) for c in range(cols)]


class _Pre(pipeline.AugmentingMap):
    def __init__(self):
        self.augment, self.image_size = {"flip": 0.5, "crop": {"scale": (0.6, 1.0)}}, 32

    def random_map(self, ex, rng):
        return {"image": ex["image"], "augment": augment.draw(rng, self.augment, ex["image"].shape),
                "id": np.int32(ex["id"])}


def _stream(process_index: int, budgets=(4, 9, 16)):
    src = [{"image": im, "id": i} for i, im in enumerate(_images(24, seed=1))]
    nf = prep.Budgets(patch=8, train=budgets, eval=budgets)
    return pipeline.train_stream(src, _Pre(), batch_size=4, seed=3, process_index=process_index, process_count=2,
                                 num_threads=0, naflex=nf)


def test_budget_is_drawn_per_batch_equal_on_every_host_and_restored_on_resume():
    hosts = [iter(_stream(p)) for p in (0, 1)]
    batches = [[next(it) for _ in range(12)] for it in hosts]
    budgets = [[b["image"]["mask"].shape[1] for b in host] for host in batches]
    assert budgets[0] == budgets[1]  # one global batch shape per step
    assert set(budgets[0]) == {4, 9, 16}  # every budget is drawn
    assert budgets[0] == [prep.budget_for(3, i, (4, 9, 16)) for i in range(12)]
    ids0 = {int(x) for b in batches[0][:3] for x in b["id"]}  # the first epoch: 3 batches × 4 × 2 hosts = 24
    ids1 = {int(x) for b in batches[1][:3] for x in b["id"]}
    assert not ids0 & ids1 and len(ids0 | ids1) == 24  # the hosts read disjoint examples
    for b in batches[0]:  # each image's grid fits the batch's budget
        assert (b["image"]["grid"].prod(1) <= b["image"]["mask"].shape[1]).all()
        assert (b["image"]["mask"].sum(1) == b["image"]["grid"].prod(1)).all()
    it = iter(_stream(0))
    for _ in range(5):
        next(it)
    state = it.get_state()
    again = iter(_stream(0))
    again.set_state(state)
    for k in range(5, 12):
        a, b = next(again), batches[0][k]
        np.testing.assert_array_equal(a["image"]["patches"], b["image"]["patches"])
        np.testing.assert_array_equal(a["id"], b["id"])


def test_config_errors_name_the_keys():
    with pytest.raises(ValueError, match="valid"):
        prep.from_config({"budget": (16,)})
    with pytest.raises(ValueError, match="budgets is empty"):
        prep.from_config({"patch": 8})
    with pytest.raises(ValueError, match="patch"):
        prep.from_config({"budgets": (16,)})
    assert prep.from_config({}) is None
    assert prep.from_config({"budgets": (9, 16), "patch": 8}).eval == (9, 16)


@pytest.fixture(scope="module")
def tux_dir():
    d = os.environ["VLM_JAX_DATA_DIR"]
    tuxpaint.prepare(d)
    tuxpaint.prepare(d, native=True)
    return d


def test_native_stamps_keep_their_aspect_ratio_and_match_the_squared_ones(tux_dir):
    """n64: longer side 64, the squared s64 stamp is the native one centred on white (same stamps, same order)."""
    native = tuxpaint.load_split(tux_dir, "test", native=True)
    square = tuxpaint.load_split(tux_dir, "test")
    assert native["path"] == square["path"] and native["caption"] == square["caption"]
    ratios = []
    for im, sq in zip(native["image"], square["image"]):
        h, w = im.shape[:2]
        assert max(h, w) == 64
        ratios.append(w / h)
        canvas = np.full((64, 64, 3), 255, np.uint8)
        canvas[(64 - h) // 2:(64 - h) // 2 + h, (64 - w) // 2:(64 - w) // 2 + w] = im
        if min(h, w) >= 48:  # nearly square: the two renders differ only by resampling
            assert np.abs(canvas.astype(int) - sq.astype(int)).mean() < 12
    ratios = np.maximum(ratios, 1 / np.asarray(ratios))
    assert (ratios > 1.5).mean() > 0.1  # many stamps are far from square


def _run(workdir: Path, *overrides: str) -> subprocess.CompletedProcess:
    cfg = "experiments/tuxpaint_naflex.py:size=test,steps=3,batch=16,budgets=4+9,eval_budgets=4+16"
    return subprocess.run([sys.executable, "-m", "vlm_jax.main", "--config", cfg, "--workdir", str(workdir),
                           "--config.evals.batch_size=32", "--config.checkpoint.every_steps=3", "--config.mesh=[('data', 1)]",
                           *overrides],
                          cwd=ROOT, capture_output=True, text=True, env=dict(os.environ), timeout=600)


def test_main_trains_naflex_and_evaluates_every_budget(tux_dir, tmp_path):
    out = _run(tmp_path / "run")
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    evals = results["evals"]
    for budget in (4, 16):
        assert 0.0 <= evals[f"zeroshot/tuxpaint/test@{budget}/all/i2t_R@1/model"] <= 1.0
    assert not any(k.startswith("zeroshot/tuxpaint/test/") for k in evals)  # no fixed-resolution set
    # FLOPs are the mean over the two budgets: between the 4-patch and the 9-patch step
    assert results["flops_per_step"] > 0


def test_main_trains_coca_on_naflex_and_captions_at_every_budget(tux_dir, tmp_path):
    """CoCa (contrastive + captioning, both reading NaFlex tokens) through `vlm_jax.main`: generated-caption
    metrics, perplexity and zero-shot retrieval at each evaluation budget, none at fixed resolution."""
    cfg = "experiments/tuxpaint_captioning.py:objective=coca,size=test,steps=2,batch=16,naflex=4+9,eval_budgets=4+16"
    out = subprocess.run([sys.executable, "-m", "vlm_jax.main", "--config", cfg, "--workdir", str(tmp_path / "run"),
                          "--config.evals.batch_size=32", "--config.evals.scoring=False"],
                         cwd=ROOT, capture_output=True, text=True, env=dict(os.environ), timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    evals = json.loads((tmp_path / "run" / "results.json").read_text())["evals"]
    for budget in (4, 16):
        assert 0.0 <= evals[f"caption/tuxpaint/test@{budget}/all/CIDEr-D/model"]
        assert np.isfinite(evals[f"caption/tuxpaint/test@{budget}/perplexity"])
        assert 0.0 <= evals[f"zeroshot/tuxpaint/test@{budget}/all/i2t_R@1/model"] <= 1.0
    assert not any("tuxpaint/test/" in k for k in evals)


def test_objectives_reading_image_tokens_refuse_naflex(tux_dir, tmp_path):
    from vlm_jax.train.trainer import Setup

    config = runpy.run_path(str(ROOT / "experiments/emoji_flava.py"))["get_config"]("parts=contrastive,size=test")
    config.data = runpy.run_path(str(ROOT / "experiments/tuxpaint_naflex.py"))["get_config"]("size=test").data
    config.data.data_dir = tux_dir
    config.evals = dict(sets=["tuxpaint"])
    with pytest.raises(ValueError, match="objective 'flava' does not train on NaFlex"):  # MIM reads image tokens
        Setup(_finalized(config))
    config = runpy.run_path(str(ROOT / "experiments/tuxpaint_naflex.py"))["get_config"]("size=test")
    config.data.naflex.patch = 4
    config.data.data_dir = tux_dir
    with pytest.raises(ValueError, match="differs from the model's patch size"):
        Setup(_finalized(config))


def _finalized(config):
    from vlm_jax.train.trainer import finalize_config

    return finalize_config(config)


def _two_exact_images(rng: np.random.Generator) -> dict:
    """Two NaFlex inputs at budget 8 whose 2 × 4 and 4 × 2 grids fill every slot (no padding)."""
    images = [rng.integers(0, 256, (8, 16, 3), np.uint8), rng.integers(0, 256, (16, 8, 3), np.uint8)]
    exact = prep.eval_inputs(images, 4, 8)
    assert exact["mask"].all()
    return exact


def _padded(exact: dict, junk: np.random.Generator) -> dict:
    """`exact` padded with 5 more slots holding junk pixels and positions (masked out)."""
    out = {k: np.concatenate([v, np.zeros((2, 5) + v.shape[2:], v.dtype)], 1) if v.ndim > 1 and k != "grid"
           else v for k, v in exact.items()}
    out["patches"][:, 8:] = junk.uniform(-1, 1, out["patches"][:, 8:].shape)
    out["positions"][:, 8:] = junk.integers(0, 3, out["positions"][:, 8:].shape)
    return out


@pytest.mark.parametrize("cap_queries,embed_dim", [(0, 0), (4, 16)])  # CapPa (every token), CoCa (pooled)
def test_captioner_masks_naflex_padding(cap_queries, embed_dim):
    """A Captioner on a NaFlex batch: junk in the padding slots (pixels and positions) changes no output, and a
    batch padded past its grid equals the same patches without padding (the decoder's cross-attention, the
    caption pooler and CoCa's contrastive pooler all skip the pad); greedy captions agree too."""
    import jax
    import jax.numpy as jnp

    from vlm_jax.models import decoder as dec
    from vlm_jax.models.captioner import Captioner
    from vlm_jax.models.decoding import greedy

    model = Captioner(image=dict(width=16, depth=1, mlp_dim=32, num_heads=2, patch_size=(4, 4), posemb="learn",
                                 posemb_grid=3),
                      decoder=dict(width=16, depth=2, mlp_dim=32, num_heads=2, vocab_size=40, max_len=6,
                                   **(dict(unimodal_depth=1, cls_token=True) if embed_dim else {})),
                      cap_queries=cap_queries, embed_dim=embed_dim)
    rng = np.random.default_rng(0)
    exact = _two_exact_images(rng)

    text = jnp.asarray(rng.integers(3, 40, (2, 6)), jnp.int32)
    params = model.init(jax.random.key(0), exact, text)["params"]
    run = jax.jit(lambda img: model.apply({"params": params}, img, text)[0])
    want = run(exact)
    for seed in (1, 2):
        got = run(_padded(exact, np.random.default_rng(seed)))
        for g, w in zip(got, want):
            if w is not None:
                np.testing.assert_allclose(g, w, atol=2e-5)

    def captions(img):
        context, _ = model.apply({"params": params}, img, method="encode")
        cache, context_cache = dec.start_decoding(model, params, context, 2)
        step = dec.step_fn(model, params, context_cache)
        return greedy(step, cache, jnp.full((2,), 1, jnp.int32), max_len=5, eos_id=2, pad_id=0)

    np.testing.assert_array_equal(captions(_padded(exact, np.random.default_rng(3))), captions(exact))


@pytest.mark.parametrize("layout", ["encdec", "decoder"])  # PaLI; the decoder-only stack (PaliGemma, PrefixLM)
def test_prompted_models_mask_naflex_padding(layout):
    """PaLI and the image prefix-LM on a NaFlex batch with a task prompt: junk in the padding slots (pixels and
    positions) changes no logit, and a batch padded past its grid equals the same patches without padding (PaLI's
    encoder and cross-attention, or the prefix-LM's self-attention, teacher-forced and through the decoding cache);
    greedy answers agree too."""
    import jax
    import jax.numpy as jnp

    from vlm_jax.models import decoder as dec
    from vlm_jax.models.decoding import greedy
    from vlm_jax.models.pali import PaLI
    from vlm_jax.models.prefix_lm import ImagePrefixLM

    image = dict(width=16, depth=1, mlp_dim=32, num_heads=2, patch_size=(4, 4), posemb="learn", posemb_grid=3)
    decoder = dict(width=16, depth=2, mlp_dim=32, num_heads=2, vocab_size=40, max_len=10)
    if layout == "encdec":
        model = PaLI(image=image, encoder=dict(width=16, depth=1, num_heads=2), decoder=decoder, prompt_len=4)
    else:
        model = ImagePrefixLM(image=image, decoder=decoder)
    rng = np.random.default_rng(0)
    exact = _two_exact_images(rng)

    prompt = jnp.asarray([[5, 6, 7, 0], [8, 9, 0, 0]], jnp.int32)  # padded prompts: their pads stay hidden too
    text = jnp.asarray(rng.integers(3, 40, (2, 6)), jnp.int32)
    params = model.init(jax.random.key(0), exact, text, prompt=prompt)["params"]
    run = jax.jit(lambda img: model.apply({"params": params}, img, text, prompt=prompt)[0][2])
    want = run(exact)
    for seed in (1, 2):
        np.testing.assert_allclose(run(_padded(exact, np.random.default_rng(seed))), want, atol=2e-5)

    def answers(img):
        context, _ = model.apply({"params": params}, img, prompt, method="encode")
        cache, context_cache = dec.start_decoding(model, params, context, 2)
        step = dec.step_fn(model, params, context_cache)
        return greedy(step, cache, jnp.full((2,), 1, jnp.int32), max_len=5, eos_id=2, pad_id=0)

    np.testing.assert_array_equal(answers(_padded(exact, np.random.default_rng(3))), answers(exact))
    # the test can fail: without the mask the padding's junk reaches the logits
    unmasked = _padded(exact, np.random.default_rng(1))
    unmasked["mask"] = np.ones_like(unmasked["mask"])
    with pytest.raises(AssertionError):
        np.testing.assert_allclose(run(unmasked), want, atol=2e-5)


def test_multitask_naflex_batches_keep_each_images_aspect(tux_dir, data_dir):
    """The PaLI mixture on NaFlex: every element's grid is the largest one of its source image's aspect within the
    batch's budget (Tux Paint stamps read at their own aspect ratio, emoji square, the text-only task a grey square),
    the mask covers exactly rows × cols, and the evaluation tasks come once per eval budget."""
    import ml_collections

    from vlm_jax.data import multitask

    cfg = ml_collections.ConfigDict(dict(name="multitask", data_dir=data_dir, image_size=32, num_threads=0,
                                         tasks=dict(caption_en=1.0, emoji_name=1.0, translate_de=1.0),
                                         naflex=dict(budgets=(9, 16), patch=8, eval_budgets=(4, 16))))
    data = multitask.MultiTask(cfg)
    native = tuxpaint.load_split(tux_dir, "train", native=True)
    tux_shapes = {im.shape[:2] for im in native["image"]}
    seen_tux, names = set(), data.task_names
    for i, full in zip(range(3), data.train(24, 0, 0, 1)):
        budget, batch = prep.budget_for(0, i, (9, 16)), dict(full["image"], task=full["task"])
        assert batch["patches"].shape == (24, budget, 8 * 8 * 3)
        for k in range(24):
            rows, cols = batch["grid"][k]
            assert batch["mask"][k].sum() == rows * cols and batch["mask"][k, :rows * cols].all()
            task = names[int(batch["task"][k])]
            if task == "caption_en":  # some stored stamp's aspect gives this grid
                fits = {s for s in tux_shapes if prep.grid_for(*s, 8, budget) == (rows, cols)}
                assert fits, (rows, cols)
                seen_tux.add((int(rows), int(cols)))
            else:
                assert rows == cols == int(budget ** 0.5)  # squares (64 px emoji, 32 px grey)
            if task == "translate_de":
                real = batch["patches"][k, :rows * cols].astype(int)
                assert np.abs(real - 128).max() <= 2  # the grey square (augmentation at most rounds it)
    assert any(r != c for r, c in seen_tux)  # native aspect, not squared
    assert sorted(data.prompt_tasks()) == sorted(f"{n}@{b}" for n in names for b in (4, 16))


def test_main_trains_pali_on_naflex_and_evaluates_every_task_at_every_budget(tux_dir, data_dir, tmp_path):
    """PaLI's decoder-only layout (the image prefix-LM) on the NaFlex mixture through `vlm_jax.main`: every task is
    generated and scored at each evaluation budget, none at fixed resolution."""
    cfg = "experiments/multitask_pali.py:layout=decoder,size=test,steps=2,batch=16,naflex=4+9,eval_budgets=4+16"
    out = subprocess.run([sys.executable, "-m", "vlm_jax.main", "--config", cfg, "--workdir", str(tmp_path / "run"),
                          "--config.evals.batch_size=32", "--config.evals.max_items=8",
                          "--config.evals.scoring_pairs=64"],
                         cwd=ROOT, capture_output=True, text=True, env=dict(os.environ), timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    evals = json.loads((tmp_path / "run" / "results.json").read_text())["evals"]
    for budget in (4, 16):
        assert evals[f"tasks/emoji_name@{budget}/all/items"] == 8
        assert 0.0 <= evals[f"tasks/emoji_name@{budget}/all/exact/model"] <= 1.0
        assert 0.0 <= evals[f"tasks/caption_en@{budget}/all/CIDEr-D/model"]
        assert f"tasks/emoji_name@{budget}/all/scoring_top@1/model" in evals
    assert not any(k.startswith("tasks/emoji_name/") for k in evals)
    # the loaded run and the caption tool read a file at its own aspect ratio, at the chosen budget
    import vlm_jax
    from vlm_jax.tools import caption

    run = vlm_jax.load(tmp_path / "run")
    assert run.budget == 16
    wide = np.full((20, 60, 3), 255, np.uint8)  # a 2 × 5 red bar drawn on white: 1:3 once cropped to the drawing
    wide[4:16, 6:54] = (200, 30, 30)
    Image.fromarray(wide).save(tmp_path / "bar.png")
    batch = run.preprocess([tmp_path / "bar.png"])
    rows, cols = batch["grid"][0]
    assert cols >= 3 * rows - 1 and rows * cols <= 16  # kept wide, not squared
    run.budget = 4
    assert tuple(run.preprocess([wide])["grid"][0]) == prep.grid_for(20, 60, 8, 4) == (1, 3)
    fns = run.objective.caption_fns
    want = fns.generate(run.params, run.preprocess([tmp_path / "bar.png"]), "which group?")
    assert caption.caption_files(tmp_path / "run", [str(tmp_path / "bar.png")], prompt="which group?",
                                 budget=4) == want
