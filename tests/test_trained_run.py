"""A trained run (interrupted once, then resumed) through what users look at: `vlm_jax.load` gives back the
evaluator's embeddings and the results table's zero-shot accuracy, on another mesh too, with clear errors for
workdirs it cannot load; its TensorBoard event files, read by TensorBoard's own reader, hold metrics.jsonl's
scalars the first batch and the final evaluation's retrieval grid as images."""
import json
import shutil

import numpy as np
import pytest

import vlm_jax
from vlm_jax.api import RUN_FORMAT, RunLoadError
from vlm_jax.config import apply_overrides, load_config
from vlm_jax.evals.metrics import topk_hits
from vlm_jax.evals.zeroshot import retrieval_grid
from vlm_jax.train.progress import read_jsonl
from vlm_jax.train.tensorboard import crc32c, grid
from vlm_jax.train.trainer import finalize_config, train

OVERRIDES = ["total_steps=12", "batch_size=32", "evals.sets=['emoji']", "evals.batch_size=128",
             "checkpoint.every_steps=6", "progress=False", "log_every=1"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir):
    workdir = tmp_path_factory.mktemp("api") / "run"
    config = apply_overrides(finalize_config(load_config("experiments/emoji_two_tower.py:size=test,loss=siglip")),
                             OVERRIDES)
    train(config, workdir, stop_after=9)  # logs steps 7-9 after the step-6 checkpoint, then stops
    out = train(config, workdir)  # resumes from step 6
    return workdir, out


def test_load_gives_the_evaluators_embeddings_and_accuracy(trained):
    workdir, out = trained
    evaluator = out["setup"].objective.evaluators()["zeroshot"]
    cross = evaluator.sets["emoji/cross"]
    params = out["state"].params
    run = vlm_jax.load(workdir)
    assert run.step == 12 and run.config.objective == "contrastive"
    np.testing.assert_array_equal(run.embed_images(cross.images), evaluator.embedder.images(params, cross.images))
    np.testing.assert_array_equal(run.class_embeddings(cross.class_names),
                                  evaluator.class_embeddings(params, cross.class_names))
    preds = run.classify(cross.images, cross.class_names, k=5)
    index = {n: i for i, n in enumerate(cross.class_names)}
    top = np.array([[index[n] for n in row] for row in preds.names])
    for k in (1, 5):
        hits = np.mean([cross.labels[i] in top[i, :k] for i in range(len(top))])
        assert hits == pytest.approx(out["evals"][f"zeroshot/emoji/cross/all/top@{k}/model"], abs=1e-12)
    # SigLIP probabilities are independent sigmoids of t·cos + b (float64 reference)
    t, b = np.exp(float(params["t"])), float(params["b"])
    cos = run.embed_images(cross.images[:3]).astype(np.float64) @ run.class_embeddings(cross.class_names).T
    np.testing.assert_allclose(preds.matrix[:3], 1 / (1 + np.exp(-(t * cos + b))), rtol=1e-9)


def test_retrieval_and_another_mesh(trained):
    workdir, out = trained
    cross = out["setup"].objective.evaluators()["zeroshot"].sets["emoji/cross"]
    run = vlm_jax.load(workdir)
    names = [cross.class_names[i] for i in cross.labels[:8]]
    idx, scores = run.retrieve(names, cross.images[:64], k=3)
    sims = run.embed_texts(names) @ run.embed_images(cross.images[:64]).T
    hits = topk_hits(sims, np.arange(8), (3,))[3]  # brute force: is image i among text i's top 3
    assert [i in row for i, row in enumerate(idx)] == list(hits.astype(bool))
    np.testing.assert_allclose(scores[:, 0], sims.max(1), rtol=1e-6)
    one = vlm_jax.load(workdir, mesh=[("data", 1)], step=6)
    assert one.step == 6 and dict(one.setup.mesh.shape) == {"data": 1}
    last = vlm_jax.load(workdir, mesh=[("data", 1)])
    np.testing.assert_allclose(last.embed_images(cross.images[:64]), run.embed_images(cross.images[:64]), atol=1e-5)


def test_clear_errors(trained, tmp_path):
    workdir, _ = trained
    with pytest.raises(RunLoadError, match="no config.json"):
        vlm_jax.load(tmp_path)
    with pytest.raises(RunLoadError, match=r"saved steps: \[6, 12\]"):
        vlm_jax.load(workdir, step=7)
    with pytest.raises(RunLoadError, match=r"16 devices.*mesh=\[\('data', -1\)\]"):
        vlm_jax.load(workdir, mesh=[("data", 16)])
    copy = tmp_path / "copy"
    shutil.copytree(workdir, copy, ignore=shutil.ignore_patterns("checkpoints"))
    with pytest.raises(RunLoadError, match="no checkpoint"):
        vlm_jax.load(copy)
    newer = json.loads((copy / "vlm_jax.json").read_text())
    (copy / "vlm_jax.json").write_text(json.dumps({**newer, "format": RUN_FORMAT + 1}))
    with pytest.raises(RunLoadError, match="upgrade vlm_jax"):
        vlm_jax.load(copy)
    (copy / "vlm_jax.json").write_text(json.dumps({"vlm_jax": "0.0.1", "format": RUN_FORMAT}))
    config = json.loads((copy / "config.json").read_text())
    config["model"]["image"]["retired_option"] = 1
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(RunLoadError, match=r"(?s)written by vlm_jax 0\.0\.1.*retired_option"):
        vlm_jax.load(copy)


def test_crc32c_check_value():
    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C catalogue's check value


def test_tensorboard_reads_back_the_jsonl_scalars_and_input_grid(trained):
    import io

    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    workdir, out = trained
    events = EventAccumulator(str(workdir), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    records = read_jsonl(workdir / "metrics.jsonl")
    train_records = [r for r in records if r["split"] == "train"]
    assert [r["step"] for r in train_records] == list(range(1, 13))  # the attempt's steps 7-9 were dropped
    tags = set(events.Tags()["scalars"])
    for split in ("train", "eval"):
        rows = [r for r in records if r["split"] == split]
        keys = {k for r in rows for k, v in r.items() if k not in ("step", "split") and isinstance(v, (int, float))}
        assert {f"{split}/{k}" for k in keys} <= tags
        for key in keys:
            got = [(e.step, e.value) for e in events.Scalars(f"{split}/{key}")]
            want = [(r["step"], float(np.float32(r[key]))) for r in rows if key in r]
            np.testing.assert_array_equal(np.array(got), np.array(want), err_msg=key)  # float32, exact
    (image,) = events.Images("inputs/image")
    batch = next(iter(out["setup"].objective.train_data(32, 0, 0, 1)))
    decoded = np.asarray(Image.open(io.BytesIO(image.encoded_image_string)))
    np.testing.assert_array_equal(decoded, grid(np.asarray(batch["image"])[:16]))
    # the zero-shot evaluator's retrieval grid at the final eval: recomputed through vlm_jax.load
    (picture,) = events.Images("eval/zeroshot/emoji/cross/retrieval")
    assert picture.step == 12
    cross = out["setup"].objective.evaluators()["zeroshot"].sets["emoji/cross"]
    queries = cross.labels[np.linspace(0, len(cross.labels) - 1, 6).astype(int)]
    run = vlm_jax.load(workdir)
    sims = run.class_embeddings([cross.class_names[c] for c in queries]) @ run.embed_images(cross.images).T
    shown = cross.images if cross.pixel_images is None else cross.pixel_images
    want = retrieval_grid(shown, cross.labels, queries, sims, 6)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(picture.encoded_image_string))), want)


def test_plot_tool_overlays_runs_on_the_compute_axis(trained, tmp_path):
    from vlm_jax.tools import plot

    workdir, out = trained
    twin = tmp_path / "twin"
    shutil.copytree(workdir, twin, ignore=shutil.ignore_patterns("checkpoints"))
    plotted = plot.main([str(workdir), str(twin), "--x", "compute", "--out", str(tmp_path / "o.png")])
    records = read_jsonl(workdir / "metrics.jsonl")
    per_step = 32 * out["forward_gmacs_per_sample"]
    want = [(r["step"] * per_step, r["loss"]) for r in records if r["split"] == "train"]
    assert [p["run"] for p in plotted["train/loss"]] == ["run", "twin"]
    np.testing.assert_allclose(plotted["train/loss"][0]["points"], want, rtol=1e-12)
    assert plotted["train/loss"][1]["points"] == plotted["train/loss"][0]["points"]
    (top1,) = [v for k, v in plotted.items() if k.endswith("cross/all/top@1/model")]
    np.testing.assert_allclose(top1[0]["points"], [(12 * per_step, out["evals"]["zeroshot/emoji/cross/all/top@1/model"])],
                               rtol=1e-12)
    with pytest.raises(FileNotFoundError, match="training workdir"):
        plot.main([str(tmp_path / "nothing")])


def test_retrieval_grid_frames_hits_green_and_misses_red():
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (10, 4, 4, 3)).astype(np.float32)
    labels = np.array([0, 1, 2, 3, 3, 5, 6, 7, 8, 9])
    sims = rng.normal(size=(2, 10))
    picture = retrieval_grid(images, labels, np.array([3, 7]), sims, k=3)
    assert picture.shape == (2 * 6 + 2, 3 * 6 + 2, 3)  # 4-px tiles, 2-px white gaps
    for row, query in enumerate((3, 7)):
        for col, index in enumerate(np.argsort(-sims[row])[:3]):
            y, x = 2 + 6 * row, 2 + 6 * col
            corner = picture[y, x]
            assert tuple(corner) == ((0, 170, 0) if labels[index] == query else (200, 0, 0))
            inner = np.clip(np.rint((images[index, 1:-1, 1:-1] + 1) * 127.5), 0, 255)
            np.testing.assert_array_equal(picture[y + 1:y + 3, x + 1:x + 3], inner)


def test_probe_tool_scores_true_captions_against_foils(trained, tmp_path, capsys):
    """`python -m vlm_jax.tools.probe`: its accuracies equal a float64 recomputation from the run's own image and
    text embeddings (cosine of the true caption vs the foil, per item), and its table has a row per run."""
    from vlm_jax.evals.compositional import probe_items
    from vlm_jax.tools import probe

    workdir, _ = trained
    rows = probe.main(["--workdir", str(workdir), "--scenes", "24", "--seed", "5", "--json", str(tmp_path / "p.json")])
    got = json.loads((tmp_path / "p.json").read_text())[str(workdir)]
    assert got == rows[str(workdir)] and f"| {workdir} |" in capsys.readouterr().out
    blank = json.loads((tmp_path / "p.json").read_text())[f"{workdir} (blank images)"]
    scenes, names = probe.probe_scenes(24, 5)
    items = probe_items(scenes, names)
    run = vlm_jax.load(workdir)
    img = run.embed_images(np.stack([scenes[it.scene].image for it in items])).astype(np.float64)
    cos = lambda texts: np.sum(img * run.embed_texts(texts).astype(np.float64), axis=1)  # noqa: E731
    wins = cos([it.true for it in items]) > cos([it.foil for it in items])
    # the blank control: one white canvas's embedding for every item
    white = run.embed_images(np.full((1, 64, 64, 3), 255, np.uint8)).astype(np.float64)
    blank_cos = lambda texts: run.embed_texts(texts).astype(np.float64) @ white[0]  # noqa: E731
    blank_wins = blank_cos([it.true for it in items]) > blank_cos([it.foil for it in items])
    for kind in ("count", "relation", "word_order", "all"):
        pick = [i for i, it in enumerate(items) if kind in ("all", it.kind)]
        assert got[kind] == pytest.approx(np.mean(wins[pick]), abs=1e-12), kind
        assert blank[kind] == pytest.approx(np.mean(blank_wins[pick]), abs=1e-12), kind
        assert got[f"{kind}/items"] == len(pick)
