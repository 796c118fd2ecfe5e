"""SigLIP 2 recipe: LocCa task sequences against a Python reference, composed scenes with exact boxes, the EMA
teacher against a NumPy EMA of the student's parameter history through the real train step, self-distillation
and masked-prediction gradients reaching only the student, the late switch-on through `train()`; only the parts
the weights switch on are built; the teacher is sharded like the student; dropout and CLS pooling; low-resolution
local views and scenes for the grounding rows only; the LocCa evaluator (IoU, greedy decoding, planted perfect
predictions, the real decoder against a step-by-step reference); and a killed CLI run resumes to the same state."""
import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from test_preemption import ROOT, _steps_logged
from vlm_jax.data import robust
from vlm_jax.config import apply_overrides, load_config
from vlm_jax.data.scenes import compose_scenes
from vlm_jax.data.tokenizer import EVAL_TEMPLATE
from vlm_jax.evals.captioning import cider_d
from vlm_jax.evals.locca import LoccaEvaluator, LoccaVocab, box_iou, greedy_decode
from vlm_jax.evals.zeroshot import EvalSet
from vlm_jax.losses.locca import grounding_rows, task_sequences
from vlm_jax.models.siglip2 import SigLIP2, resize_posemb
from vlm_jax.objectives.siglip2 import random_crops
from vlm_jax.train.checkpoint import Checkpointer
from vlm_jax.train.optim import path_str
from vlm_jax.train.trainer import Setup, finalize_config, train
from steps import cli_env

QUIET = ["progress=False", "batch_size=16", "evals.batch_size=128", "log_every=1", "checkpoint.every_steps=100",
         "evals.probe_sets=[]", "evals.locca_sets=[]"]
ONE = "mesh=[('data', 1)]"


def _config(arg="size=test", *overrides, image=None):
    config = apply_overrides(finalize_config(load_config(f"experiments/emoji_siglip2.py:{arg}")), [*QUIET, *overrides])
    if image:  # ViT fields the experiment leaves out
        with config.unlocked():
            config.model.image.update(image)
    return config


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


@pytest.mark.parametrize("rows", [None, [1, 2, 4, 5]])
def test_scenes_hold_each_image_at_its_box(rows):
    rng = np.random.default_rng(1)
    images = rng.uniform(-1, 1, (6, 16, 16, 3)).astype(np.float32)
    scenes, boxes, partner = compose_scenes(jax.random.key(2), jnp.asarray(images), 0.5, rows)
    own = np.arange(6) if rows is None else np.asarray(rows)
    assert len(scenes) == len(own) and (np.asarray(partner) != own).all()
    small = images.astype(np.float64).reshape(6, 8, 2, 8, 2, 3).mean(axis=(2, 4))  # the 2 × 2 block means
    for i, box in enumerate(np.asarray(boxes)):
        top, left, bottom, right = (box * 16).round().astype(int)
        assert bottom - top == 8 and right - left == 8
        np.testing.assert_allclose(np.asarray(scenes[i, top:bottom, left:right]), small[own[i]], atol=1e-6)
        outside = np.ones((16, 16), bool)
        outside[top:bottom, left:right] = False
        allowed = np.concatenate([small[partner[i]].ravel(), [1.0]])
        assert np.abs(np.asarray(scenes[i])[outside].ravel()[:, None] - allowed[None, :]).min(axis=1).max() < 1e-6


def test_local_crops_keep_native_pixels_at_the_lower_resolution():
    rng = np.random.default_rng(3)
    images = rng.uniform(-1, 1, (5, 32, 32, 3)).astype(np.float32)
    crops = np.asarray(random_crops(jax.random.key(4), jnp.asarray(images), 0.5, 16))
    assert crops.shape == (5, 16, 16, 3)
    for image, crop in zip(images, crops):  # each crop is some 16 × 16 window of its image, untouched
        windows = np.lib.stride_tricks.sliding_window_view(image, (16, 16, 3))[:, :, 0]
        assert np.any(np.all(windows == crop, axis=(2, 3, 4)))


def test_position_embedding_resamples_like_bilinear_resize():
    x = jax.random.normal(jax.random.key(5), (1, 4 * 6, 7))
    for new in [(2, 3), (8, 12), (3, 5)]:
        want = jax.image.resize(x.reshape(4, 6, 7), (*new, 7), "linear", antialias=False)
        np.testing.assert_allclose(np.asarray(resize_posemb(x, (4, 6), new)).reshape(*new, 7), np.asarray(want),
                                   atol=1e-5)
    # a 2× smaller grid is the mean of each 2 × 2 block
    block = np.asarray(x, np.float64).reshape(2, 2, 3, 2, 7).mean(axis=(1, 3))
    np.testing.assert_allclose(np.asarray(resize_posemb(x, (4, 6), (2, 3))).reshape(2, 3, 7), block, atol=1e-6)


@pytest.mark.parametrize("arg,overrides,built", [
    ("recipe=siglip,size=test", [], set()),
    ("size=test", ["loss.locca_weight=0.0"], {"teacher", "head", "mask"}),
    ("size=test", ["loss.distill_weight=0.0", "loss.masked_weight=0.0"], {"decoder"}),
    ("size=test", ["loss.masked_weight=0.0"], {"decoder", "teacher", "head"}),
])
def test_only_the_parts_the_weights_switch_on_are_built(data_dir, arg, overrides, built):
    state = Setup(_config(arg, ONE, *overrides)).abstract_state()
    params = state.params
    assert set(params) == {"img", "txt", "t", "b"} | ({"decoder"} if "decoder" in built else set()) \
        | ({"distill_head"} if "head" in built else set())
    assert ("mask_token" in params["img"]) == ("mask" in built)
    if "teacher" in built:
        assert set(state.extra) == {"teacher", "center", "patch_center", "updates"}
        assert jax.tree.structure(state.extra["teacher"]) == jax.tree.structure(
            {k: params[k] for k in ("img", "distill_head")})
    else:
        assert state.extra == {}


@pytest.fixture(scope="module")
def steps(data_dir):
    """Three real train steps with self-distillation on from the start; the state after each."""
    setup = Setup(_config("size=test", ONE, "loss.distill_start=0.0", "total_steps=3"))
    state = setup.init_state(jax.random.key(0))
    data = iter(setup.objective.train_data(16, 0, 0, 1))
    history = [jax.device_get(state)]
    for _ in range(3):
        batch = {k: jnp.asarray(v) for k, v in next(data).items() if k != robust.COUNTS}
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
        d, t, *_ = objective._self_supervised(p, dict(extra, teacher=teacher), batch["image"], jax.random.key(3), True)
        return d + 0.25 * t

    g_student, g_teacher = jax.jit(jax.grad(ssl_loss, argnums=(0, 1)))(params, extra["teacher"])
    assert all(float(jnp.abs(x).max()) == 0.0 for x in jax.tree.leaves(g_teacher))
    assert float(jnp.abs(g_student["distill_head"]["prototypes"]["kernel"]).max()) > 0
    assert float(jnp.abs(g_student["img"]["mask_token"]).max()) > 0  # masked prediction reaches the mask token
    assert float(jnp.abs(g_student["img"]["pos_embedding"]).max()) > 0  # through the local views' resampling too
    assert all(float(jnp.abs(x).max()) == 0.0 for x in jax.tree.leaves(g_student["txt"]))


def _conv_inputs(fn, *args):
    """The input shapes of every convolution (the patch stems) in fn's jaxpr, with repeats."""
    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "conv_general_dilated":
                yield tuple(eqn.invars[0].aval.shape)
            for value in eqn.params.values():
                for sub in (value if isinstance(value, (tuple, list)) else [value]):
                    if hasattr(sub, "eqns") or hasattr(sub, "jaxpr"):
                        yield from walk(getattr(sub, "jaxpr", sub))
    return sorted(walk(jax.make_jaxpr(fn)(*args).jaxpr))


def test_scenes_only_for_grounding_rows_and_local_views_at_low_resolution(steps):
    """The loss's forward encodes: the batch (B = 16 rows at 32 px), the scenes of the grounding rows only (every
    row but each third: 10), two local crops at 16 px, the masked view and the teacher's view."""
    setup, history, _, batch = steps
    objective = setup.objective
    assert list(grounding_rows(16)) == [i for i in range(16) if i % 3]
    state = jax.device_put(history[-1])
    convs = _conv_inputs(lambda p, e, b: objective.loss(p, e, b, jax.random.key(0))[0],
                         state.params, state.extra, batch)
    want = sorted([(16, 32, 32, 3)] * 3 + [(10, 32, 32, 3)] + [(16, 16, 16, 3)] * 2)
    assert convs == want


def test_image_dropout_reaches_the_student_views_and_not_the_teacher(data_dir):
    setup = Setup(_config("size=test", ONE, image={"dropout": 0.2}))
    objective = setup.objective
    state = setup.init_state(jax.random.key(0))
    images = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (8, 32, 32, 3)), jnp.float32)
    run = jax.jit(lambda p, e, train: objective._self_supervised(p, e, images, jax.random.key(1), train),
                  static_argnums=2)
    with setup.context():
        on, off = run(state.params, state.extra, True), run(state.params, state.extra, False)
    distill_on, tips_on, center_on, patch_on, _ = on
    distill_off, tips_off, center_off, patch_off, _ = off
    assert float(distill_on) != float(distill_off) and float(tips_on) != float(tips_off)  # the student drops
    np.testing.assert_array_equal(np.asarray(center_on), np.asarray(center_off))  # the teacher does not
    np.testing.assert_array_equal(np.asarray(patch_on), np.asarray(patch_off))


def test_cls_pooling_masks_patches_only(data_dir):
    """With a CLS token the masked view hides round(ratio · patches) of the 16 patches per image, never the CLS,
    and the teacher's patch centre averages the patches' prototypes."""
    setup = Setup(_config("size=test", ONE, "loss.distill_start=0.0", image={"pool_type": "tok"}))
    state = setup.init_state(jax.random.key(0))
    batch = {k: jnp.asarray(v) for k, v in next(iter(setup.objective.train_data(16, 0, 0, 1))).items()
             if k != robust.COUNTS}
    state, metrics = setup.train_step(state, batch)
    patches = (32 // 8) ** 2
    assert float(metrics["masked_tokens"]) == 16 * round(0.5 * patches)
    assert np.isfinite(float(metrics["loss"])) and float(metrics["masked_loss"]) > 0
    assert state.extra["patch_center"].shape == (32,)


@pytest.mark.parametrize("mesh,overrides,axis", [
    ("[('data', 4), ('tensor', 2)]", [], "tensor"),
    ("[('fsdp', 8)]", ["fsdp_dims=rules"], "fsdp"),
])
def test_teacher_is_sharded_like_the_student(data_dir, tmp_path, mesh, overrides, axis):
    config = _config("size=test", f"mesh={mesh}", "fsdp_min_size=0", "total_steps=2", "loss.locca_weight=0.0",
                     "peak_flops=1e9", "evals.sets=[]", *overrides)  # no decoder: a smaller program to compile
    out = train(config, tmp_path / "run", stop_after=1)
    state = out["state"]
    for name in ("img", "distill_head"):
        student = {path_str(p): x.sharding for p, x in jax.tree_util.tree_leaves_with_path(state.params[name])}
        teacher = {path_str(p): x.sharding
                   for p, x in jax.tree_util.tree_leaves_with_path(state.extra["teacher"][name])}
        assert teacher.keys() == student.keys()
        for k in student:
            assert teacher[k].spec == student[k].spec, (name, k, teacher[k].spec, student[k].spec)
    specs = [str(x.sharding.spec) for x in jax.tree.leaves(state.extra["teacher"])]
    assert sum(axis in s for s in specs) >= 4, specs  # really split, not equal by both being replicated


def test_auxiliary_losses_switch_on_for_the_last_fifth(data_dir, tmp_path):
    out = train(_config("size=test", "total_steps=5", "evals.sets=['emoji']", ONE), tmp_path / "run")
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r for r in records if r.get("split") == "train"]
    assert [r["distill_active"] for r in train_steps] == [0, 0, 0, 0, 1]  # updates ≥ round(0.8 · 5)
    assert train_steps[-1]["distill_loss"] > 0 and train_steps[0]["locca_loss"] > 0
    for r in train_steps:
        expected = r["contrastive_loss"] + r["locca_loss"] + r["distill_loss"] + 0.25 * r["masked_loss"]
        assert r["loss"] == pytest.approx(expected, rel=1e-5)
    # the zero-shot evaluator reads the trained towers: its top-1 equals a float64 NumPy recount from the model
    objective, params = out["setup"].objective, jax.device_get(out["state"].params)
    ev = objective.data.eval_sets(["emoji"])["emoji/cross"]
    model = objective.model()
    zimg = np.asarray(jax.jit(lambda p, x: model.apply({"params": p}, x, None)[0][0])(params, ev.images), np.float64)
    prompts = objective.data.tokenize([EVAL_TEMPLATE.format(c) for c in ev.class_names])
    ztxt = np.asarray(jax.jit(lambda p, t: model.apply({"params": p}, None, t)[0][1])(params, prompts), np.float64)
    top1 = np.mean(np.argmax(zimg @ ztxt.T, axis=1) == np.asarray(ev.labels))
    assert out["evals"]["zeroshot/emoji/cross/all/top@1/model"] == pytest.approx(top1, abs=1.01 / len(ev.labels))


# ---------------------------------------------------------------- the LocCa evaluator


def test_box_iou_equals_pixel_counts():
    rng = np.random.default_rng(6)
    def boxes():  # (top, left, bottom, right) on a 40 × 40 grid, some empty
        corners = rng.integers(0, 41, (200, 2, 2))
        return np.concatenate([corners.min(axis=1), corners.max(axis=1)], axis=1)

    a, b = boxes(), boxes()
    b[:20] = a[:20]  # some identical pairs
    got = box_iou(a / 40, b / 40)
    for i in range(200):
        ma, mb = np.zeros((40, 40), bool), np.zeros((40, 40), bool)
        ma[a[i, 0]:a[i, 2], a[i, 1]:a[i, 3]] = True
        mb[b[i, 0]:b[i, 2], b[i, 1]:b[i, 3]] = True
        union = (ma | mb).sum()
        assert got[i] == pytest.approx((ma & mb).sum() / union if union else 0.0, abs=1e-12)


def test_greedy_decode_equals_a_python_loop_over_a_bigram_model():
    """Logits at position t depend on the token at t only (a causal bigram table): greedy decoding must keep the
    prompt, take the best allowed id at each step, and pad after EOS."""
    rng = np.random.default_rng(7)
    vocab, length, eos, pad = 12, 9, 2, 0
    table = rng.normal(size=(vocab, vocab))
    table[:, eos] += 0.3
    prompt_len = np.array([1, 3, 2, 4, 1])
    prompt = np.zeros((5, length), np.int32)
    for i, n in enumerate(prompt_len):
        prompt[i, :n] = rng.integers(3, vocab, n)
    allowed = np.ones((5, vocab), bool)
    allowed[:, pad] = False
    allowed[1, 5:9] = False
    allowed[3] = np.arange(vocab) >= 8  # no EOS: fills every position
    got = np.asarray(jax.jit(lambda p, n, a: greedy_decode(lambda s: jnp.asarray(table)[s[:, :-1]], p, n, a, eos, pad))(
        prompt, prompt_len, allowed))
    for i in range(5):
        seq = list(prompt[i, :prompt_len[i]])
        while len(seq) < length and (len(seq) == prompt_len[i] or seq[-1] != eos):
            scores = np.where(allowed[i], table[seq[-1]], -np.inf)
            seq.append(int(np.argmax(scores)))
        seq += [pad] * (length - len(seq))
        assert list(got[i]) == seq, i


VOCAB = LoccaVocab(task_ids=(50, 51, 52), bin_offset=53, bins=32, text_vocab=50, eos=2, pad=0)
WORDS = ["an", "emoji", "of", "a", "cat", "dog", "red", "blue", "apple", "picture", "flag"]


def _tokenize(texts, length=8):
    out = np.zeros((len(texts), length), np.int32)
    for i, t in enumerate(texts):
        ids = [3 + WORDS.index(w) for w in t.split()][:length - 1] + [2]
        out[i, :len(ids)] = ids
    return out


def _detokenize(ids):
    rows = []
    for row in np.asarray(ids).tolist():
        row = row[:row.index(2)] if 2 in row else row
        rows.append(" ".join(WORDS[t - 3] for t in row if 3 <= t < 3 + len(WORDS)))
    return rows


def _planted_set(n=9):
    rng = np.random.default_rng(8)
    things = ["cat", "dog", "apple", "flag"]
    colours = ["red", "blue"]
    refs = [[f"an emoji of a {colours[i % 2]} {things[i % 4]}", f"a picture of a {things[i % 4]}",
             f"a {colours[i % 2]} {things[i % 4]}"] for i in range(n)]
    pool = rng.uniform(-1, 1, (4, 8, 8, 3)).astype(np.float32)
    return EvalSet(images=rng.uniform(-1, 1, (n, 32, 32, 3)).astype(np.float32), labels=np.arange(n),
                   class_names=[str(i) for i in range(n)], class_images=None, references=refs,
                   pixel_images=rng.uniform(-1, 1, (n, 8, 8, 3)).astype(np.float32), caption_pool_pixels=pool,
                   caption_pool_texts=[f"a picture of a {t}" for t in things])


def _oracle(evaluator, shift=0):
    """A decode function that answers every task with its target (REF boxes moved by `shift` bins)."""
    inp = evaluator.inputs["planted"]
    refs = evaluator.sets["planted"].references

    def decode(params, images, prompts, lengths, allowed):
        out = prompts.copy()
        for r, (image, prompt, n) in enumerate(zip(images, prompts, lengths)):
            source = inp.images if prompt[0] == VOCAB.task_ids[0] else inp.scenes
            i = int(np.flatnonzero(np.all(source == image, axis=(1, 2, 3)))[0])
            if prompt[0] == VOCAB.task_ids[1]:
                answer = list(np.clip(np.round(inp.boxes[i] * 31) + shift, 0, 31).astype(int) + VOCAB.bin_offset)
            else:
                answer = [t for t in _tokenize([refs[i][0]])[0] if t]
            assert np.all(allowed[r, answer[:4]])  # the evaluator allows what it asks for
            out[r, n:n + len(answer)] = answer
        return out
    return decode


def test_planted_perfect_decoder_scores_perfectly_and_baselines_match_brute_force():
    ev = _planted_set()
    evaluator = LoccaEvaluator(None, {"planted": ev}, VOCAB, _tokenize, _detokenize, scale=0.5)
    inp = evaluator.inputs["planted"]
    evaluator.decode = _oracle(evaluator)
    out = evaluator(None)
    refs = {i: r for i, r in enumerate(ev.references)}
    perfect = cider_d({i: r[0] for i, r in refs.items()}, refs)
    assert out["planted/cap/CIDEr-D/model"] == pytest.approx(perfect)
    assert out["planted/gcap/CIDEr-D/model"] == pytest.approx(perfect)
    assert out["planted/ref/acc@0.5/model"] == 1.0
    # the pixel NN: the caption of the most correlated pool image, recounted here
    px = lambda x: (lambda f: f / np.linalg.norm(f, axis=1, keepdims=True))(  # noqa: E731
        (lambda f: f - f.mean(axis=1, keepdims=True))(x.reshape(len(x), -1).astype(np.float64)))
    nearest = np.argmax(px(ev.pixel_images) @ px(ev.caption_pool_pixels).T, axis=1)
    pixel = cider_d({i: ev.caption_pool_texts[j] for i, j in enumerate(nearest)}, refs)
    assert out["planted/cap/CIDEr-D/pixel"] == pytest.approx(pixel)
    # the centred box on a pixel grid (scenes are 32 px, objects 16 px)
    hits = []
    for box in np.round(inp.boxes * 32).astype(int):
        mine, centre = np.zeros((32, 32), bool), np.zeros((32, 32), bool)
        mine[box[0]:box[2], box[1]:box[3]] = True
        centre[8:24, 8:24] = True
        hits.append((mine & centre).sum() / (mine | centre).sum() >= 0.5)
    assert out["planted/ref/acc@0.5/centre"] == pytest.approx(np.mean(hits))
    # boxes 5 bins off: the share whose 16-px box moved by 5 · 32/31 px in each coordinate still overlaps ≥ 0.5
    evaluator.decode = _oracle(evaluator, shift=5)
    moved = evaluator(None)["planted/ref/acc@0.5/model"]
    want = []
    for box in inp.boxes:
        pred = np.clip(np.round(box * 31) + 5, 0, 31) / 31
        grid = (np.arange(992) + 0.5) / 992  # 1/(31 · 32) cells: both boxes lie on the grid lines

        def inside(b):
            return ((grid >= b[0]) & (grid < b[2]))[:, None] & ((grid >= b[1]) & (grid < b[3]))[None, :]

        inter, union = (inside(box) & inside(pred)).sum(), (inside(box) | inside(pred)).sum()
        want.append(inter / union >= 0.5)
    assert moved == pytest.approx(np.mean(want))


def test_real_decoder_matches_step_by_step_decoding_through_the_objectives_evaluator(data_dir):
    """The objective builds the LocCa evaluator when the decoder is on; its captions come from the jitted greedy
    loop, checked against decoding one token at a time on the prefix alone (no padding positions)."""
    config = _config("size=test", ONE, "evals.locca_sets=['emoji/cross']", "evals.locca_images=3",
                     "evals.sets=[]")
    setup = Setup(config)
    objective = setup.objective
    evaluator = objective.locca_evaluator()
    assert "locca" in objective.build_evaluators()
    assert Setup(_config("size=test", ONE, "loss.locca_weight=0.0",
                         "evals.locca_sets=['emoji/cross']")).objective.locca_evaluator() is None
    params = jax.device_get(setup.init_state(jax.random.key(1)).params)
    model = objective.model()
    inp = evaluator.inputs["emoji/cross"]
    prompts, lengths = inp.prompts["cap"]
    allowed = np.broadcast_to(evaluator.vocab.allowed(False), (3, evaluator.vocab.bin_offset + evaluator.vocab.bins))
    got = evaluator.decode(params, inp.images, prompts, lengths, np.ascontiguousarray(allowed))
    context = model.apply({"params": params}, inp.images, method=SigLIP2.encode_image)["tokens"]
    width = prompts.shape[1]
    # causal: the logits at position j of a fixed-width buffer read tokens 0 … j only (one compiled call per step)
    logits_at = jax.jit(lambda p, t, c, j: jnp.take(model.apply({"params": p}, t, c, method=SigLIP2.decode), j,
                                                     axis=1))
    for i in range(3):
        seq = [int(prompts[i, 0])]
        while len(seq) < width and (len(seq) == 1 or seq[-1] != evaluator.vocab.eos):
            buffer = np.full((1, width - 1), evaluator.vocab.pad, np.int32)  # the decoder reads at most width − 1
            buffer[0, :len(seq)] = seq
            logits = logits_at(params, jnp.asarray(buffer), context[i:i + 1], len(seq) - 1)
            seq.append(int(np.argmax(np.where(allowed[i], np.asarray(logits[0]), -np.inf))))
        seq += [evaluator.vocab.pad] * (prompts.shape[1] - len(seq))
        assert list(got[i]) == seq
    out = evaluator(params)
    refs = dict(enumerate(evaluator.sets["emoji/cross"].references))
    captions = objective.data.decode(np.asarray(got)[:, 1:])
    assert out["emoji/cross/cap/CIDEr-D/model"] == pytest.approx(cider_d(dict(enumerate(captions)), refs))
    assert out["emoji/cross/num_images"] == 3


# ---------------------------------------------------------------- kill and resume through the CLI


CLI_CONFIG = "experiments/emoji_siglip2.py:size=test,steps=9"
CLI_OVERRIDES = ["mesh=[('data', 1)]", "batch_size=16", "log_every=1", "checkpoint.every_steps=3",
                 "evals.sets=[]", "evals.probe_sets=[]", "evals.locca_sets=[]", "optim.warmup_steps=2",
                 "loss.distill_start=0.2"]  # self-distillation from update round(0.2 · 9) = 2


def _cli(workdir, kill_at=None):
    """Runs the CLI to the end, or SIGKILLs it once step `kill_at` is logged; returns its output (the test's runs
    share a compilation cache, `steps.cli_env`)."""
    cmd = [sys.executable, "-m", "vlm_jax.main", "--config", CLI_CONFIG, "--workdir", str(workdir),
           *[f"--config.{o}" for o in CLI_OVERRIDES]]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=cli_env(workdir.parent / "jit_cache"), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    if kill_at is None:
        out = proc.communicate(timeout=600)[0]
        assert proc.returncode == 0, out[-3000:]
        return out
    deadline = time.time() + 600
    def saved() -> bool:  # a finished checkpoint (async saves finalise their step directory last)
        return any(p.name.isdigit() for p in (workdir / "checkpoints").glob("*")) if (workdir / "checkpoints").exists() \
            else False

    while not (any(s >= kill_at for s in _steps_logged(workdir)) and saved()):
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    return proc.communicate(timeout=120)[0]


def _final_state(workdir):
    config = apply_overrides(finalize_config(load_config(CLI_CONFIG)), CLI_OVERRIDES)
    setup = Setup(config)
    state, meta = Checkpointer(workdir / "checkpoints", every_steps=3).restore_latest(
        setup.abstract_state(), iter(setup.objective.train_data(16, 0, 0, 1)))
    assert meta["step"] == 9
    return jax.device_get(state)


@pytest.mark.slow
def test_killed_run_resumes_the_teacher_exactly(data_dir, tmp_path):
    _cli(tmp_path / "full")
    _cli(tmp_path / "cut", kill_at=5)
    stopped = max(_steps_logged(tmp_path / "cut"))
    assert stopped < 9, "the run finished before the kill; nothing was tested"
    out = _cli(tmp_path / "cut")
    assert "Resumed from checkpoint at step " in out, out[-3000:]
    resumed = int(out.split("Resumed from checkpoint at step ")[1].split()[0])
    assert resumed >= 3  # from a checkpoint written after self-distillation switched on (update 2)
    full, cut = _final_state(tmp_path / "full"), _final_state(tmp_path / "cut")
    assert int(cut.extra["updates"]) == 9
    for part in ("extra", "params"):
        same = jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), getattr(cut, part), getattr(full, part))
        assert all(jax.tree.leaves(same)), f"{part} differ after a kill at step {stopped}"
    assert float(np.abs(np.asarray(full.extra["center"])).max()) > 0  # the centres did move
