"""MAE: exact mask ratios, an encoder that sees only the visible patches, the loss against a float64 NumPy
reference over hidden patches only; then through `train()`: an MAE run whose image tower starts a contrastive run
(`init_from`), copied arrays bit-identical, the rest as a fresh init, locked towers unchanged by training."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

import vlm_jax
from vlm_jax.data import robust
from vlm_jax.config import apply_overrides, load_config
from vlm_jax.losses.masked import num_masked, random_masking
from vlm_jax.train.init_from import InitFromError
from vlm_jax.train.trainer import Setup, finalize_config, train

QUIET = ["progress=False", "batch_size=32", "evals.batch_size=128", "log_every=1", "checkpoint.every_steps=100"]


def _config(spec, *overrides):
    return apply_overrides(finalize_config(load_config(f"experiments/{spec}")), [*QUIET, *overrides])


@pytest.mark.parametrize("n,ratio", [(16, 0.75), (49, 0.75), (64, 0.5), (10, 0.33), (4, 0.9)])
def test_masks_hide_exactly_the_ratio_uniformly(n, ratio):
    keep, mask = random_masking(jax.random.key(n), 4000, n, ratio)
    keep, mask = np.asarray(keep), np.asarray(mask)
    hidden = min(round(ratio * n), n - 1)
    assert num_masked(n, ratio) == hidden
    assert (mask.sum(1) == hidden).all() and keep.shape == (4000, n - hidden)
    assert (np.diff(keep, axis=1) > 0).all()  # ascending, no repeats
    visible = np.zeros_like(mask)
    np.put_along_axis(visible, keep, True, axis=1)
    assert (visible == ~mask).all()
    freq = mask.mean(0)  # every position hidden at the ratio's rate (binomial, 5 sigma)
    p = hidden / n
    assert np.abs(freq - p).max() < 5 * np.sqrt(p * (1 - p) / 4000)


def test_bad_ratio_is_refused():
    with pytest.raises(ValueError, match="mask ratio"):
        random_masking(jax.random.key(0), 2, 16, 1.0)


@pytest.fixture(scope="module")
def mae(data_dir):
    setup = Setup(_config("emoji_mae.py:size=test", "mesh=[('data', 1)]"))
    state = setup.init_state(jax.random.key(0))
    batch = next(iter(setup.objective.train_data(8, 0, 0, 1)))
    return setup.objective, state.params, {k: np.asarray(v) for k, v in batch.items() if k != robust.COUNTS}


def test_encoder_sees_only_the_visible_patches(mae):
    """Changing hidden patches' pixels changes nothing; changing one visible patch changes the prediction."""
    objective, params, batch = mae
    image = jnp.asarray(batch["image"])
    keep, mask = random_masking(jax.random.key(3), image.shape[0], objective.num_patches, 0.75)
    apply = lambda x: objective.model().apply({"params": params}, x, keep=keep)  # noqa: E731
    pred, aux = apply(image)
    assert aux["img/encoded"].shape[1] == objective.num_patches - num_masked(objective.num_patches, 0.75)
    ph, pw = objective.patch
    grid_w = image.shape[2] // pw
    noisy = np.array(image)
    for b, row in enumerate(np.asarray(mask)):
        for pos in np.flatnonzero(row):
            r, c = divmod(pos, grid_w)
            noisy[b, r * ph:(r + 1) * ph, c * pw:(c + 1) * pw] = np.random.default_rng(pos).uniform(-1, 1, (ph, pw, 3))
    np.testing.assert_array_equal(apply(jnp.asarray(noisy))[0], pred)
    r, c = divmod(int(keep[0, 0]), grid_w)
    noisy[0, r * ph:(r + 1) * ph, c * pw:(c + 1) * pw] += 0.5
    assert np.abs(np.asarray(apply(jnp.asarray(noisy))[0][0] - pred[0])).max() > 1e-3


def test_loss_is_the_float64_mean_squared_error_over_hidden_patches(mae):
    """The objective's loss = NumPy float64: patches cut out by slicing, each standardised by its own mean and
    variance, squared error averaged over the hidden ones of the mask the objective drew."""
    objective, params, batch = mae
    rng = jax.random.key(7)
    loss, (metrics, _) = objective.loss(params, {}, {k: jnp.asarray(v) for k, v in batch.items() if k != robust.COUNTS}, rng, train=True)
    pred, _, mask = objective.reconstruct(params, jnp.asarray(batch["image"]), rng, True)
    pred, mask = np.asarray(pred, np.float64), np.asarray(mask)
    image = batch["image"].astype(np.float64)
    ph, pw = objective.patch
    grid_w = image.shape[2] // pw
    errors = []
    for b in range(image.shape[0]):
        for pos in np.flatnonzero(mask[b]):
            r, c = divmod(pos, grid_w)
            patch = image[b, r * ph:(r + 1) * ph, c * pw:(c + 1) * pw].reshape(-1)
            target = (patch - patch.mean()) / np.sqrt(patch.var() + 1e-6)
            errors.append(np.mean((pred[b, pos] - target) ** 2))
    assert float(loss) == pytest.approx(np.mean(errors), rel=1e-5)
    assert float(metrics["mask_ratio"]) == 0.75


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, data_dir):
    """An MAE run trained through `train()`; its evaluators are the probes and reconstruction error."""
    workdir = tmp_path_factory.mktemp("mae") / "run"
    out = train(_config("emoji_mae.py:size=test", "total_steps=4", "evals.probe_sets=['emoji']", "mesh=[('data', 1)]"),
                workdir)
    return workdir, out


def test_mae_run_reports_probes_and_reconstruction(pretrained):
    _, out = pretrained
    ev = out["evals"]
    for probe in ("linear", "knn"):
        assert 0 <= ev[f"probe/emoji/all/{probe}@1/model"] <= 1
        assert ev[f"probe/emoji/all/{probe}@1/pixel"] > ev[f"probe/emoji/all/{probe}@1/chance"]
    assert ev["recon/emoji/all/mse/model"] > 0 and ev["recon/emoji/all/mse/mean"] > 0.5
    assert out["flops_per_step"] > 0


def _flat(tree):
    return traverse_util.flatten_dict(jax.device_get(tree), sep="/")


def test_init_from_copies_the_image_tower_and_initialises_the_rest(pretrained, tmp_path):
    """A contrastive run started from the MAE run: every MAE encoder array bit-identical, the pooling head, text
    tower and temperature exactly a fresh run's; then trained with the tower locked, it stays bit-identical."""
    workdir, _ = pretrained
    source = _flat(vlm_jax.load(workdir, mesh=[("data", -1)]).params)
    init = ["init_from.workdir=" + str(workdir), "init_from.include=^img/"]
    config = _config("emoji_two_tower.py:size=test", *init, "evals.sets=['emoji']")
    started = _flat(train(config, tmp_path / "started", stop_after=0)["state"].params)
    fresh = _flat(Setup(config).init_state(jax.random.key(config.seed)).params)
    copied = [p for p in source if p.startswith("img/")]
    assert copied and all(p in started for p in copied)
    for path, value in started.items():
        expected = source[path] if path in copied else fresh[path]
        np.testing.assert_array_equal(value, expected, err_msg=path)
    assert any(p.startswith("img/MAPHead_0") for p in started if p not in copied)

    locked = apply_overrides(config, ["total_steps=3", "optim.freeze=^img/(?!MAPHead_0|head/)"])
    after = _flat(train(locked, tmp_path / "locked")["state"].params)
    for path in copied:
        np.testing.assert_array_equal(after[path], source[path], err_msg=path)
    assert not np.array_equal(after["txt/head/kernel"], fresh["txt/head/kernel"])  # the rest did train


def test_init_from_errors_name_the_problem(pretrained, tmp_path):
    workdir, _ = pretrained
    base = ["init_from.workdir=" + str(workdir), "evals.sets=['emoji']"]
    cases = [(["init_from.include=^nothing"], "selects no parameter"),
             (["init_from.include=."], "have no place in this model"),  # the MAE decoder
             (["init_from.include=^img/", "model.image.width=64"], "differs")]
    for overrides, message in cases:
        with pytest.raises(InitFromError, match=message):
            train(_config("emoji_two_tower.py:size=test", *base, *overrides), tmp_path / message[:5], stop_after=0)


def test_asif_tool_reads_the_mae_encoder_and_minilm(pretrained, tmp_path):
    """`python -m vlm_jax.tools.asif` on the MAE run: its top-1 equals a recomputation from the loaded run's image
    features and MiniLM's sentence embeddings through a float64 loop of ASIF's recipe (top-k, power, cosine), and
    the features it reads are the ones the run's probes use."""
    import json

    import vlm_jax
    from vlm_jax.evals.asif import minilm_encoder
    from vlm_jax.tools import asif

    workdir, out = pretrained
    got = asif.main(["--image-run", str(workdir), "--anchors", "96", "--k", "8", "--p", "3",
                     "--json", str(tmp_path / "a.json")])
    assert json.loads((tmp_path / "a.json").read_text()) == got and got["anchors"] == 96
    run = vlm_jax.load(workdir)
    import ml_collections

    from vlm_jax.data.base import get

    data = get(ml_collections.ConfigDict(dict(name="emoji", image_size=run.image_size,
                                              train_styles=("noto", "twitter", "facebook"))))
    cross = data.eval_sets(["emoji"])["emoji/cross"]
    images, texts = asif.anchor_pairs(data, 96)
    feats = run.image_features(cross.images).astype(np.float64)
    np.testing.assert_allclose(run.image_features(cross.images[:4]),  # (another batch shape: rounding only)
                               out["setup"].objective.image_features(out["state"].params, cross.images[:4]), atol=1e-5)
    encode = minilm_encoder()
    anchor_img = run.image_features(images).astype(np.float64)
    anchor_txt = encode(texts).astype(np.float64)
    classes = encode([asif.TEMPLATE.format(n) for n in cross.class_names]).astype(np.float64)

    def rel(x, anchors):
        out = np.zeros((len(x), len(anchors)))
        for i, v in enumerate(x):
            sims = anchors @ v / (np.linalg.norm(anchors, axis=1) * np.linalg.norm(v))
            for j in np.argsort(-sims, kind="stable")[:8]:
                out[i, j] = max(sims[j], 0.0) ** 3
            out[i] /= np.linalg.norm(out[i]) or 1.0
        return out

    scores = rel(feats, anchor_img) @ rel(classes, anchor_txt).T
    top = np.argsort(-scores, axis=1, kind="stable")
    for n in (1, 5):
        hits = np.any(top[:, :n] == cross.labels[:, None], axis=1)
        assert got[f"emoji/cross/all/top@{n}"] == pytest.approx(np.mean(hits), abs=1e-12)
        assert got[f"emoji/cross/nonflag/top@{n}"] == pytest.approx(np.mean(hits[cross.subsets["nonflag"]]), abs=1e-12)
