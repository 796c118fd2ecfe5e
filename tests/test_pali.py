"""PaLI (encoder–decoder) and the decoder-only prefix layout with task prompts, on the multitask data: prefix /
pad masks, answer-only loss against float64 NumPy, KV-cached decoding with prompts equal to the full forward pass,
the weighted task schedule (binomial bound, ranks, exact resume), sharded runs equal to one device, and the
whole path through train() and `tools.caption --prompt`."""
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from steps import np_cross_entropy as _np_cross_entropy
from steps import run_steps as _run
from test_generative import _ended, _planted_eos, _uncached_greedy, check_beam_search_with_eos
from vlm_jax.config import apply_overrides, load_config
from vlm_jax.data.multitask import TaskSchedule, parse_task
from vlm_jax.evals.prompted import exact_match
from vlm_jax.losses.generative import shift_right
from vlm_jax.train.trainer import Setup, finalize_config

B = 16
TINY = ["batch_size=16", "fsdp_min_size=0", "optim.warmup_steps=1", "optim.name=sgd", "optim.momentum=0.9",
        "optim.lr=0.1", "model.image.num_heads=4", "model.decoder.num_heads=4"]


def _setup(layout, mesh=(("data", 1),), more=()):
    c = finalize_config(load_config(f"experiments/multitask_pali.py:size=test,layout={layout}"))
    extra = ["model.encoder.num_heads=4"] if layout == "encdec" else []
    return Setup(apply_overrides(c, TINY + extra + [f"mesh={list(mesh)!r}", *more]))


def _batches(setup, n=3, seed=0):
    """Real batches of the task mixture (prompts and answers of varying length)."""
    it = iter(setup.objective.data.train(B, seed, 0, 1))
    return [{k: v for k, v in next(it).items() if k != "_skipped"} for _ in range(n)]


@pytest.fixture(scope="module")
def models(data_dir):
    out = {}
    for layout in ("encdec", "decoder"):
        setup = _setup(layout)
        out[layout] = (setup, jax.device_get(setup.init_state(jax.random.key(0)).params), _batches(setup, 1)[0])
    return out


def _logits(obj, params, batch, text=None, prompt=None):
    """The model's teacher-forced answer logits for the batch (or other answers / prompts)."""
    text = batch["text"] if text is None else text
    prompt = batch["prompt"] if prompt is None else prompt
    return np.asarray(obj.model().apply({"params": params}, jnp.asarray(batch["image"]),
                                        shift_right(jnp.asarray(text), obj.ids["bos"]), prompt=jnp.asarray(prompt))[0][2])


def test_decoder_layout_prefix_masks(models):
    """Image + prompt positions never see the answer; a prompt token changes image tokens and answer logits."""
    setup, params, batch = models["decoder"]
    obj, model = setup.objective, setup.objective.model()
    image, prompt = jnp.asarray(batch["image"]), jnp.asarray(batch["prompt"])
    inputs = shift_right(jnp.asarray(batch["text"]), obj.ids["bos"])

    def hidden(prompt, inputs):
        context, _ = model.apply({"params": params}, image, prompt, method="encode")
        tokens = jnp.concatenate([prompt, inputs], axis=1)
        plen = jnp.full((B,), prompt.shape[1], jnp.int32)
        logits, aux = model.apply({"params": params}, tokens, prefix=context["image"], prefix_len=plen,
                                  method=lambda m, t, **kw: m.text_decoder(t, **kw))
        return np.asarray(logits[:, prompt.shape[1]:]), np.asarray(aux["block00"])

    base_logits, base_h = hidden(prompt, inputs)
    n_img = base_h.shape[1] - prompt.shape[1] - inputs.shape[1]
    n_prefix = n_img + prompt.shape[1]
    changed_logits, changed_h = hidden(prompt, inputs.at[:, 1:].set(7))  # every answer token but BOS
    np.testing.assert_allclose(changed_h[:, :n_prefix], base_h[:, :n_prefix], atol=1e-6)  # prefix unchanged
    assert not np.allclose(changed_logits[:, 1:], base_logits[:, 1:], atol=1e-4)
    moved_logits, moved_h = hidden(prompt.at[:, 0].set(prompt[:, 0] + 1), inputs)  # first prompt token
    assert (np.abs(moved_h[:, :n_img] - base_h[:, :n_img]).max(axis=(1, 2)) > 1e-6).all()  # image sees the prompt
    assert (np.abs(moved_logits - base_logits).max(axis=(1, 2)) > 1e-6).all()
    valid = np.asarray(prompt) != obj.ids["pad"]
    for j in range(1, int(valid.sum(1).max())):  # every other real prompt token reaches the image tokens
        _, moved_h = hidden(prompt.at[:, j].set(jnp.where(prompt[:, j] > 0, prompt[:, j] + 1, 0)), inputs)
        reached = np.abs(moved_h[:, :n_img] - base_h[:, :n_img]).max(axis=(1, 2)) > 1e-6
        np.testing.assert_array_equal(reached, valid[:, j])  # and a pad position, unchanged, changes nothing
    # the model's own forward pass is this computation
    np.testing.assert_allclose(_logits(obj, params, batch, prompt=prompt), base_logits, rtol=1e-5, atol=1e-5)


def test_encdec_masks_prompt_pads_and_causality(models):
    """Encoder: bidirectional over image + prompt, prompt pads hidden; decoder: causal."""
    setup, params, batch = models["encdec"]
    obj = setup.objective
    model = obj.model()
    prompt = np.asarray(batch["prompt"])
    base = _logits(obj, params, batch)
    used = int((prompt != 0).sum(1).max())
    assert used < prompt.shape[1]
    np.testing.assert_allclose(_logits(obj, params, batch, prompt=prompt[:, :used]), base, rtol=1e-5, atol=1e-5)
    ctx, _ = model.apply({"params": params}, jnp.asarray(batch["image"]), jnp.asarray(prompt), method="encode")
    moved, _ = model.apply({"params": params}, jnp.asarray(batch["image"]), jnp.asarray(prompt).at[:, 0].add(1),
                           method="encode")
    n_img = ctx["tokens"].shape[1] - prompt.shape[1]
    assert (np.abs(np.asarray(moved["tokens"][:, :n_img] - ctx["tokens"][:, :n_img])).max(axis=(1, 2)) > 1e-6).all()
    np.testing.assert_array_equal(np.asarray(ctx["mask"][:, n_img:]), prompt != 0)
    text = np.asarray(batch["text"])
    j = 4
    later = _logits(obj, params, batch, text=np.where(np.arange(text.shape[1]) >= j, 9, text))
    np.testing.assert_allclose(later[:, :j + 1], base[:, :j + 1], atol=1e-5)  # input j+1 is the first changed
    assert not np.allclose(later[:, j + 1:], base[:, j + 1:], atol=1e-4)


@pytest.mark.parametrize("layout", ["encdec", "decoder"])
def test_loss_covers_exactly_the_answer_tokens(models, layout):
    setup, params, batch = models[layout]
    obj = setup.objective
    loss, (metrics, _) = obj.loss(params, {}, {k: jnp.asarray(v) for k, v in batch.items()}, jax.random.key(0),
                                  train=False)
    logits = _logits(obj, params, batch)
    text = np.asarray(batch["text"])
    assert logits.shape[:2] == text.shape  # the prompt positions produce no logits
    mask = text != obj.ids["pad"]
    np.testing.assert_allclose(float(loss), _np_cross_entropy(logits, text, mask), rtol=1e-5)
    assert float(metrics["tokens"]) == mask.sum()


@pytest.mark.parametrize("layout", ["encdec", "decoder"])
def test_cached_decoding_with_prompts_equals_full_forward(models, layout):
    """KV-cached greedy answers (prompts of different lengths in one batch) equal the uncached forward pass, also
    with EOS planted so that some rows end early (EOS, then pad) while the others go on."""
    setup, params, batch = models[layout]
    obj = setup.objective
    fns, ids, model = obj.caption_fns, obj.ids, obj.model()
    prompts = ["caption en", "translate to de: red apple", "which group?", "what emoji is this?", "caption de"]
    images = np.asarray(batch["image"][:5])
    context, _ = model.apply({"params": params}, jnp.asarray(images), jnp.asarray(obj.data.tokenize_prompt(prompts)),
                             method="encode")
    argmax, lps = _uncached_greedy(model, params, context, fns.max_len, ids["bos"])
    got = fns.generate_tokens(params, images, prompts)
    np.testing.assert_array_equal(got, _ended(argmax, ids["eos"], ids["pad"]))
    one = fns.generate_tokens(params, images[1:2], prompts[1])  # alone, without the other rows' padding
    np.testing.assert_array_equal(one, got[1:2])
    planted, want = _planted_eos(params, argmax, lps, ids)
    np.testing.assert_array_equal(fns.generate_tokens(planted, images, prompts), want)


def test_cached_beam_search_with_prompts_equals_uncached_log_probs(models):
    """PaLI's beams read one cached copy of the encoder's output per image, prompt pads hidden."""
    setup, params, batch = models["encdec"]
    check_beam_search_with_eos(setup, params, np.asarray(batch["image"][:4]),
                               ["caption en", "translate to de: red apple", "which group?", "caption de"])


@pytest.mark.parametrize("layout,limit", [("encdec", 32), ("decoder", 32)])
def test_decode_max_len_beyond_the_decoder_is_a_config_error(data_dir, layout, limit):
    """The decoder-only layout's prompt takes prompt_len of its max_len positions (16 + 32): 32 are left."""
    with pytest.raises(ValueError, match=rf"evals\.decode\.max_len={limit + 1}.* {limit} "):
        _setup(layout, more=[f"evals.decode.max_len={limit + 1}"]).objective.caption_fns
    assert _setup(layout, more=[f"evals.decode.max_len={limit}"]).objective.caption_fns.max_len == limit


def test_task_schedule_frequencies_and_ranks():
    weights = [0.5, 0.3, 0.15, 0.05]
    sched = TaskSchedule(weights, seed=3, block=256)
    n = 20_000
    draws = [sched(i) for i in range(n)]
    tasks = np.array([t for t, _ in draws])
    counts = np.bincount(tasks, minlength=4)
    p = np.asarray(weights)
    assert (np.abs(counts - n * p) <= 4.5 * np.sqrt(n * p * (1 - p))).all(), counts
    seen = np.zeros(4, int)  # brute force: each element's rank is the number of earlier elements of its task
    for t, rank in draws:
        assert rank == seen[t]
        seen[t] += 1
    fresh = TaskSchedule(weights, seed=3, block=256)  # random access in any order gives the same answers
    for i in (19_999, 5, 4_097, 256, 255):
        assert fresh(i) == draws[i]
    assert [TaskSchedule(weights, seed=4, block=256)(i)[0] for i in range(64)] != list(tasks[:64])
    with pytest.raises(ValueError, match="non-negative"):
        TaskSchedule([0.0, 0.0], seed=0)


def test_mixture_stream_follows_the_schedule_and_resumes_exactly(data_dir):
    from vlm_jax.data import image_text

    import ml_collections

    data = image_text.get(ml_collections.ConfigDict(dict(name="multitask", tasks=dict(
        caption_en=1.0, emoji_name=2.0, translate_de=1.0))))
    sched = data.schedule(7)
    for p, count in ((0, 1), (1, 2)):  # process p of count takes global elements p, p + count, …
        it = iter(data.train(8, 7, p, count))
        tasks = np.concatenate([next(it)["task"] for _ in range(3)])
        np.testing.assert_array_equal(tasks, [sched(p + count * i)[0] for i in range(24)])
    it = iter(data.train(8, 7, 0, 1))
    batches = [next(it) for _ in range(3)]
    prompts = data.tokenizer.decode(np.concatenate([b["prompt"] for b in batches]))
    names = data.task_names
    for prompt, t in zip(prompts, np.concatenate([b["task"] for b in batches])):
        kind, lang = parse_task(names[t])
        assert prompt.startswith({"caption": "caption", "emoji_name": "what emoji", "translate": "translate to de"}[kind])
    text_only = np.concatenate([b["task"] for b in batches]) == names.index("translate_de")
    assert text_only.any() and not np.concatenate([b["image"] for b in batches])[text_only].any()  # blank images
    state = it.get_state()
    want = [next(it) for _ in range(3)]
    resumed = iter(data.train(8, 7, 0, 1))
    resumed.set_state(state)
    for a, b in zip(want, [next(resumed) for _ in range(3)]):
        for k in ("image", "prompt", "text", "task"):
            np.testing.assert_array_equal(a[k], b[k])
    with pytest.raises(ValueError, match="caption_<lang>"):
        image_text.get(ml_collections.ConfigDict(dict(name="multitask", tasks=dict(describe=1.0))))


def test_exact_match_and_eval_tasks(models):
    assert exact_match(["Red Apple", "x"], [["red  apple"], ["y", "X"]]) == 1.0
    assert exact_match(["a / b"], [["a / c"]]) == 0.0 and exact_match(["a / b"], [["a / c"]], " / ") == 1.0
    setup, _, _ = models["encdec"]
    tasks = setup.objective.data.prompt_tasks()
    group = tasks["emoji_group"]
    # the pixel baseline answers with the group of the nearest Noto drawing
    assert len(group.classes) > 50 and group.labels.max() < len(group.classes)
    assert 0.1 < exact_match(group.baselines["pixel"], group.references) < 1.0
    tr = tasks["translate_de"]  # held out: the unseen concepts' names
    assert all(p.startswith("translate to de: ") for p in tr.prompts) and not tr.images.any()


@pytest.fixture(scope="module")
def reference(data_dir):
    setup = _setup("encdec")
    batches = _batches(setup)
    return batches, _run(setup, batches)[:2]


@pytest.mark.parametrize("layout,mesh", [("encdec", [("fsdp", 8)]), ("encdec", [("data", 4), ("tensor", 2)]),
                                         ("decoder", [("data", 4), ("tensor", 2)])])
def test_sharded_equals_one_device(reference, models, layout, mesh):
    if layout == "encdec":
        batches, (want_losses, want_params) = reference
    else:
        batches = _batches(models["decoder"][0])
        want_losses, want_params, _ = _run(models["decoder"][0], batches)
    losses, params, _ = _run(_setup(layout, mesh), batches)
    np.testing.assert_allclose(losses, want_losses, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), params, want_params)


@pytest.mark.slow
def test_pali_through_train_evaluators_and_prompted_caption_tool(tmp_path, data_dir, capsys):
    """train() → per-task evaluation → `tools.caption --prompt` on an image file and on text alone."""
    from vlm_jax.data import emoji
    from vlm_jax.tools import caption
    from vlm_jax.train.trainer import train

    c = apply_overrides(finalize_config(load_config("experiments/multitask_pali.py:size=test,steps=3,batch=16")),
                        ["checkpoint.every_steps=3", "model.encoder.num_heads=2", "mesh=[('data', 1)]"])
    out = train(c, tmp_path / "run")
    ev, setup, params = out["evals"], out["setup"], out["state"].params
    tasks = setup.objective.data.prompt_tasks()
    evaluator = setup.objective.evaluators()["tasks"]
    for name, task in tasks.items():
        idx = evaluator.items[name]
        assert ev[f"tasks/{name}/all/items"] == len(idx) == 16
        answers = evaluator.last_answers[name]
        if task.metric == "exact":
            assert ev[f"tasks/{name}/all/exact/model"] == exact_match(answers, [task.references[i] for i in idx])
            for who, base in task.baselines.items():
                assert ev[f"tasks/{name}/all/exact/{who}"] == exact_match([base[i] for i in idx],
                                                                         [task.references[i] for i in idx])
        else:
            assert {f"tasks/{name}/all/{m}/{w}" for m in ("CIDEr-D", "BLEU-4") for w in ("model", "pixel")} <= set(ev)
    nonflag = tasks["emoji_name"].subsets["nonflag"][evaluator.items["emoji_name"]]
    assert ev["tasks/emoji_name/nonflag/items"] == nonflag.sum() > 0
    group = tasks["emoji_group"]  # chance: the subset's most common answer, given to every item
    refs = [group.references[i][0] for i in evaluator.items["emoji_group"] if group.subsets["nonflag"][i]]
    common = max(set(refs), key=refs.count)
    assert ev["tasks/emoji_group/nonflag/exact/chance"] == refs.count(common) / len(refs)
    assert ev["tasks/emoji_name/all/scoring_top@1/chance"] == pytest.approx(1 / len(tasks["emoji_name"].classes))
    path = tmp_path / "kangaroo.png"
    emoji.render_rgba("🦘", "openmoji").save(path)
    capsys.readouterr()
    caption.main(["--workdir", str(tmp_path / "run"), "--image", str(path), "--prompt", "which group?"])
    printed = capsys.readouterr().out.strip().splitlines()[-1].split("\t")
    image = caption.load_image(path, 32)
    assert printed == [str(path), setup.objective.caption_fns.generate(params, image[None], "which group?")[0]]
    caption.main(["--workdir", str(tmp_path / "run"), "--prompt", "translate to de: red apple"])
    printed = capsys.readouterr().out.strip().splitlines()[-1].split("\t")
    blank = np.zeros((1, 32, 32, 3), np.float32)
    assert printed[1] == setup.objective.caption_fns.generate(params, blank, "translate to de: red apple")[0]
    with pytest.raises(SystemExit, match="--prompt"):
        caption.main(["--workdir", str(tmp_path / "run"), "--image", str(path)])
    import vlm_jax
    from vlm_jax.api import PromptTruncatedWarning

    long = "translate to de: " + "very " * 40 + "red apple"  # beyond prompt_len: the start is cut
    assert setup.objective.data.tokenize_prompt_checked([long])[1].all()
    run = vlm_jax.load(tmp_path / "run")
    with pytest.warns(PromptTruncatedWarning, match=r"1 prompt\(s\) longer than this run's prompt_len"):
        run.caption([], prompt=long)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PromptTruncatedWarning)
        run.caption([], prompt="translate to de: red apple")  # fits: no warning


def test_config_errors_name_the_fix(data_dir):
    from vlm_jax.train.objective import get_objective

    def config(layout="encdec"):
        return finalize_config(load_config(f"experiments/multitask_pali.py:size=test,layout={layout}"))

    bad = config()
    bad.model.layout = "stack"
    with pytest.raises(ValueError, match="encdec"):
        get_objective(bad)
    bad = config()
    bad.model.encoder.depthh = 2
    with pytest.raises(ValueError, match="depth"):
        get_objective(bad)
    bad = config("decoder")
    bad.model.encoder = dict(depth=2)
    with pytest.raises(ValueError, match="one stack"):
        get_objective(bad)
    bad = config()
    bad.data = dict(name="emoji")
    with pytest.raises(ValueError, match="multitask"):
        get_objective(bad)
