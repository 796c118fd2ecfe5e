"""SigLIP 2 recipe: LocCa task sequences against a Python reference, composed scenes with exact boxes, the EMA
teacher against a NumPy EMA of the student's parameter history through the real train step, self-distillation
and masked-prediction gradients reaching only the student, and the late switch-on through `train()`."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from vlm_jax.config import apply_overrides, load_config
from vlm_jax.data.scenes import compose_scenes
from vlm_jax.losses.locca import task_sequences
from vlm_jax.train.trainer import Setup, finalize_config, train

QUIET = ["progress=False", "batch_size=16", "evals.batch_size=128", "log_every=1", "checkpoint.every_steps=100",
         "evals.probe_sets=[]"]


def _config(arg="size=test", *overrides):
    return apply_overrides(finalize_config(load_config(f"experiments/emoji_siglip2.py:{arg}")), [*QUIET, *overrides])


def test_task_sequences_match_a_python_reference():
    rng = np.random.default_rng(0)
    eos, pad, tasks = 2, 0, (90, 91, 92)
    captions = np.zeros((30, 8), np.int32)
    for row in captions:
        n = rng.integers(0, 8)
        row[:n] = rng.integers(5, 50, n)
        row[n] = eos
    boxes = rng.integers(100, 132, (30, 4)).astype(np.int32)
    task = rng.integers(0, 3, 30)
    seq, pred = (np.asarray(x) for x in task_sequences(jnp.asarray(captions), jnp.asarray(boxes), jnp.asarray(task),
                                                        eos, pad, tasks))
    for i in range(30):
        words = list(captions[i, :list(captions[i]).index(eos)])
        box = list(boxes[i])
        parts = {0: ([tasks[0]], words + [eos]), 1: ([tasks[1]] + words, box + [eos]),
                 2: ([tasks[2]] + box, words + [eos])}[task[i]]
        expected = parts[0] + parts[1]
        expected += [pad] * (seq.shape[1] - len(expected))
        assert list(seq[i]) == expected
        assert list(np.flatnonzero(pred[i])) == list(range(len(parts[0]), len(parts[0]) + len(parts[1])))


def test_scenes_hold_each_image_at_its_box():
    rng = np.random.default_rng(1)
    images = jnp.asarray(rng.uniform(-1, 1, (6, 16, 16, 3)), jnp.float32)
    scenes, boxes, partner = compose_scenes(jax.random.key(2), images, 0.5)
    assert (np.asarray(partner) != np.arange(6)).all()
    small = np.asarray(jax.image.resize(images, (6, 8, 8, 3), "linear", antialias=True))
    for i, box in enumerate(np.asarray(boxes)):
        top, left, bottom, right = (box * 16).round().astype(int)
        assert bottom - top == 8 and right - left == 8
        np.testing.assert_array_equal(np.asarray(scenes[i, top:bottom, left:right]), small[i])
        outside = np.ones((16, 16), bool)
        outside[top:bottom, left:right] = False
        assert np.isin(np.asarray(scenes[i])[outside], np.concatenate([small[partner[i]].ravel(), [1.0]])).all()


@pytest.fixture(scope="module")
def steps(data_dir):
    """Three real train steps with self-distillation on from the start; the state after each."""
    setup = Setup(_config("size=test", "mesh=[('data', 1)]", "loss.distill_start=0.0", "total_steps=3"))
    state = setup.init_state(jax.random.key(0))
    data = iter(setup.objective.train_data(16, 0, 0, 1))
    history = [jax.device_get(state)]
    for _ in range(3):
        batch = {k: jnp.asarray(v) for k, v in next(data).items()}
        state, metrics = setup.train_step(state, batch)
        history.append(jax.device_get(state))
    return setup, history, metrics, batch


def test_ema_teacher_equals_numpy_ema_of_the_student_history(steps):
    setup, history, metrics, _ = steps
    assert float(metrics["distill_active"]) == 1.0 and float(metrics["distill_loss"]) > 0
    m = setup.objective.loss_cfg["ema"]
    for name in ("img", "distill_head"):
        flat = [traverse_util.flatten_dict(s.params[name], sep="/") for s in history]
        teacher = {k: v.astype(np.float64) for k, v in flat[0].items()}  # the teacher starts as the student
        for params in flat[1:]:
            teacher = {k: m * teacher[k] + (1 - m) * params[k].astype(np.float64) for k in teacher}
        got = traverse_util.flatten_dict(history[-1].extra["teacher"][name], sep="/")
        for k in teacher:
            np.testing.assert_allclose(got[k], teacher[k], rtol=1e-5, atol=1e-7, err_msg=k)
    assert int(history[-1].extra["updates"]) == 3


def test_self_distillation_gradients_reach_only_the_student(steps):
    setup, history, _, batch = steps
    objective, state = setup.objective, history[-1]
    params, extra = jax.device_put(state.params), jax.device_put(state.extra)

    def ssl_loss(p, teacher):
        d, t, _, _ = objective._self_supervised(p, dict(extra, teacher=teacher), batch["image"], jax.random.key(3), True)
        return d + 0.25 * t

    g_student, g_teacher = jax.jit(jax.grad(ssl_loss, argnums=(0, 1)))(params, extra["teacher"])
    assert all(float(jnp.abs(x).max()) == 0.0 for x in jax.tree.leaves(g_teacher))
    assert float(jnp.abs(g_student["distill_head"]["prototypes"]["kernel"]).max()) > 0
    assert float(jnp.abs(g_student["img"]["mask_token"]).max()) > 0  # masked prediction reaches the mask token
    assert all(float(jnp.abs(x).max()) == 0.0 for x in jax.tree.leaves(g_student["txt"]))


def test_auxiliary_losses_switch_on_for_the_last_fifth(data_dir, tmp_path):
    out = train(_config("size=test", "total_steps=5", "evals.sets=['emoji']"), tmp_path / "run")
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r for r in records if r.get("split") == "train"]
    assert [r["distill_active"] for r in train_steps] == [0, 0, 0, 0, 1]  # updates ≥ round(0.8 · 5)
    assert train_steps[-1]["distill_loss"] > 0 and train_steps[0]["locca_loss"] > 0
    for r in train_steps:
        expected = r["contrastive_loss"] + r["locca_loss"] + r["distill_loss"] + 0.25 * r["masked_loss"]
        assert r["loss"] == pytest.approx(expected, rel=1e-5)
    assert 0 <= out["evals"]["zeroshot/emoji/cross/all/top@1/model"] <= 1
