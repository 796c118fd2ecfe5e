"""Issue 32's bridges into a frozen language model, through train(): a language-model run is the source, the
bridge run loads its decoder (`init_from`) and freezes it (`optim.freeze`). The LM's parameters come out
bit-identical, and the compiled step holds no weight-gradient matmul for them (counted against the same step with
nothing frozen); the mapper's prefix has the configured shape and is what the logits depend on. Flamingo: with its
gates at 0 the logits are the LM run's own model's, bit for bit; the resampler's output count does not depend on
the number of input tokens (nor on their order); cached greedy captions equal a brute-force argmax loop."""
from __future__ import annotations

import json
import re

import flax.traverse_util as traverse
import jax
import numpy as np
import pytest

ONE = "mesh=[('data', 1)]"


@pytest.fixture(scope="module")
def lm_run(data_dir, tmp_path_factory):
    """A tiny LM trained through train() (3 steps), and its workdir."""
    from vlm_jax.config import apply_overrides, load_config
    from vlm_jax.train.trainer import finalize_config, train

    config = apply_overrides(finalize_config(load_config("experiments/text_lm.py:size=test,steps=3,batch=16")),
                             [ONE, "progress=False", "data.eval_sentences=64", "evals.samples=1"])
    workdir = tmp_path_factory.mktemp("lm")
    out = train(config, workdir)
    return workdir, traverse.flatten_dict(jax.device_get(out["state"].params), sep="/")


def _bridge_config(workdir, *overrides, data="emoji"):
    from vlm_jax.config import apply_overrides, load_config
    from vlm_jax.train.trainer import finalize_config

    c = finalize_config(load_config(f"experiments/emoji_frozen_lm.py:lm={workdir},size=test,steps=3,batch=16,"
                                    f"data={data}"))
    return apply_overrides(c, [ONE, "progress=False", "evals.sets=[]", "checkpoint.every_steps=0",
                               "checkpoint.async_save=False", *overrides])


def _flamingo_config(workdir, *overrides, bridge="flamingo", data="emoji"):
    from vlm_jax.config import apply_overrides, load_config
    from vlm_jax.train.trainer import finalize_config

    c = finalize_config(load_config(f"experiments/emoji_frozen_lm.py:lm={workdir},size=test,steps=3,batch=16,"
                                    f"bridge={bridge},data={data}"))
    return apply_overrides(c, [ONE, "progress=False", "evals.sets=[]", "checkpoint.every_steps=0",
                               "checkpoint.async_save=False", *overrides])


def _dots(hlo: str) -> int:
    """Matmul instructions in an optimised HLO module (fused computations included)."""
    return len(re.findall(r"= [a-z0-9\[\]{},:]+ dot\(", hlo))


@pytest.mark.parametrize("bridge", ["clipcap", "flamingo", "visualgpt"])
def test_frozen_lm_is_bit_identical_and_gets_no_weight_gradient(bridge, lm_run, tmp_path):
    from vlm_jax.config import apply_overrides
    from vlm_jax.train.trainer import Setup, traced_step_flops, train

    lm_dir, lm_params = lm_run
    config = _bridge_config(lm_dir) if bridge == "clipcap" else _flamingo_config(lm_dir, bridge=bridge)
    out = train(config, tmp_path / "bridge")
    params = traverse.flatten_dict(jax.device_get(out["state"].params), sep="/")
    lm_paths = sorted(p for p in lm_params)  # the LM run's parameters, all under decoder/
    assert lm_paths and all(p.startswith("decoder/") for p in lm_paths)
    for path in lm_paths:
        np.testing.assert_array_equal(params[path], lm_params[path], err_msg=path)
    fresh = traverse.flatten_dict(jax.device_get(out["setup"].init_state(jax.random.key(config.seed)).params),
                                  sep="/")
    for path in params:
        if not path.startswith("decoder/"):  # everything else trained: ViT, mapper
            assert not np.array_equal(params[path], fresh[path]), path
    # the compiled step: each LM kernel's weight-gradient matmul is gone, nothing else changed
    kernels = [p for p in lm_paths if p.endswith("kernel")]
    frozen_hlo = out["setup"].train_step.compiled().as_text()
    free = Setup(apply_overrides(config, ["optim.freeze=''"]))
    free_hlo = free.train_step.compile(free.abstract_state(), free.abstract_batch()).as_text()
    # (VisualGPT: more — its first block's self-attention reads only the frozen token embeddings, before any
    # image enters, so its whole backward goes too)
    exact = bridge != "visualgpt"
    fewer = _dots(free_hlo) - _dots(frozen_hlo)
    assert fewer == len(kernels) if exact else fewer > len(kernels), (len(kernels), fewer)
    # and in FLOPs: the traced steps differ by exactly the LM's weight gradients, 2·rows·|kernel| each (rows: the
    # batch × the positions the kernel sees — prefix + caption in the blocks, the caption alone in the head)
    b, length = config.batch_size, config.data.text_len
    prefix = config.model.mapper.prefix_len if bridge == "clipcap" else 0  # the others cross-attend
    want = sum(2 * b * (length if p.startswith("decoder/head") else prefix + length) * lm_params[p].size
               for p in kernels)
    saved = traced_step_flops(free) - traced_step_flops(out["setup"])
    assert saved == want if exact else saved > want
    assert out["setup"].objective.frozen is not None and free.objective.frozen is None
    r = json.loads((tmp_path / "bridge" / "results.json").read_text())  # what the comparison table reads
    assert r["trainable_params"] == r["params"] - sum(v.size for v in lm_params.values())


@pytest.mark.parametrize("kind,expect", [("linear", 2), ("mlp", 4), ("transformer", 3), ("tokens", 16)])
def test_prefix_shapes_and_the_logits_depend_on_the_image(kind, expect, lm_run):
    from vlm_jax.config import apply_overrides
    from vlm_jax.train.objective import get_objective

    sizes = {"linear": 2, "mlp": 4, "transformer": 3}
    config = _bridge_config(lm_run[0])
    with config.unlocked():
        config.model.mapper = dict(kind=kind, **({"prefix_len": sizes[kind]} if kind in sizes else {}))
    obj = get_objective(config)
    model = obj.model()
    rng = np.random.default_rng(0)
    image = rng.uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    text = np.asarray(obj.data.tokenize(["a cat", "a cat"]))
    params = model.init(jax.random.key(1), image, obj.decoder_inputs(text))["params"]
    context, _ = model.apply({"params": params}, image, method="encode")
    assert context["image"].shape == (2, expect, 32)  # 4×4 patches of 8 px for the tokens mapper
    (_, _, logits), _ = model.apply({"params": params}, image, obj.decoder_inputs(text))
    assert logits.shape == (2, text.shape[1], obj.ids["vocab"])
    assert not np.allclose(logits[0], logits[1], atol=1e-6)  # same caption, different images


def test_resampler_output_count_is_independent_of_the_input_tokens():
    from vlm_jax.models.flamingo import PerceiverResampler

    model = PerceiverResampler(num_latents=5, depth=2, num_heads=2)
    rng = np.random.default_rng(0)
    params = model.init(jax.random.key(0), np.zeros((1, 3, 16), np.float32))["params"]
    for t in (1, 3, 50):
        x = rng.normal(size=(2, t, 16)).astype(np.float32)
        out = np.asarray(model.apply({"params": params}, x))
        assert out.shape == (2, 5, 16)
        perm = rng.permutation(t)
        np.testing.assert_allclose(np.asarray(model.apply({"params": params}, x[:, perm])), out, atol=2e-6)
        x2 = x.copy()
        x2[:, 0] = rng.normal(size=(2, 16))  # (a constant shift would vanish in the LayerNorm)
        assert not np.allclose(np.asarray(model.apply({"params": params}, x2)), out, atol=1e-4)  # it reads them


def test_flamingo_gates_at_zero_are_the_frozen_lm_and_cached_greedy_is_exact(lm_run):
    import flax

    from vlm_jax.models.decoder import start_decoding, step_fn
    from vlm_jax.models.decoding import greedy
    from vlm_jax.models.language_model import LanguageModel
    from vlm_jax.train.init_from import merge
    from vlm_jax.train.objective import get_objective

    lm_dir, lm_params = lm_run
    obj = get_objective(_flamingo_config(lm_dir))
    model = obj.model()
    rng = np.random.default_rng(0)
    image = rng.uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    text = obj.decoder_inputs(np.asarray(obj.data.tokenize(["a red apple", "two cats"])))
    fresh = flax.core.meta.unbox(model.init(jax.random.key(1), image, text)["params"])
    params, _ = merge(fresh, traverse.unflatten_dict(lm_params, sep="/"), "^decoder/")
    (_, _, logits), _ = model.apply({"params": params}, image, text)
    lm = LanguageModel(decoder=obj.decoder_fields())  # the LM run's model, alone, on its own parameters
    want, _ = lm.apply({"params": traverse.unflatten_dict(lm_params, sep="/")}, text)
    np.testing.assert_array_equal(np.asarray(logits), np.asarray(want))
    # open the gates: the image now matters, and cached greedy decoding equals the brute-force loop
    flat = traverse.flatten_dict(params, sep="/")
    flat = {k: (np.float32(0.7) if k.endswith("_gate") else v) for k, v in flat.items()}
    params = traverse.unflatten_dict(flat, sep="/")
    (_, _, open_logits), _ = model.apply({"params": params}, image, text)
    assert not np.allclose(np.asarray(open_logits), np.asarray(want), atol=1e-4)
    context, _ = model.apply({"params": params}, image, method="encode")
    cache, ctx_cache = start_decoding(model, params, context, 2)
    ids = obj.ids
    got = np.asarray(greedy(step_fn(model, params, ctx_cache), cache, np.full((2,), ids["bos"], np.int32),
                            max_len=6, eos_id=ids["eos"], pad_id=ids["pad"]))
    from steps import brute_force_greedy

    for row in range(2):
        last = lambda t, r=row: model.apply({"params": params}, image[r:r + 1], t)[0][2][0, -1]  # noqa: E731
        assert got[row].tolist() == brute_force_greedy(last, [ids["bos"]], 6, ids)


def test_pack_interleaved_against_a_token_loop():
    """Pairs → sequences of m: each row's captions end to end without their padding, every position tagged with
    its pair, padding at the end (tagged with the last pair); images grouped in order."""
    from vlm_jax.data.interleave import pack_interleaved

    rng = np.random.default_rng(3)
    lengths = [3, 5, 1, 4, 2, 5]
    text = np.zeros((6, 5), np.int32)
    for i, n in enumerate(lengths):
        text[i, :n] = rng.integers(1, 50, n)
    images = rng.integers(0, 255, (6, 4, 4, 3)).astype(np.uint8)
    out = pack_interleaved({"image": images, "text": text}, 3, pad_id=0)
    assert out["image"].shape == (2, 3, 4, 4, 3) and out["text"].shape == out["media"].shape == (2, 15)
    for row in range(2):
        want_tokens, want_media = [], []
        for j in range(3):
            for t in text[3 * row + j]:
                if t != 0:
                    want_tokens.append(int(t))
                    want_media.append(j)
        pad = 15 - len(want_tokens)
        assert out["text"][row].tolist() == want_tokens + [0] * pad
        assert out["media"][row].tolist() == want_media + [2] * pad
        for j in range(3):
            np.testing.assert_array_equal(out["image"][row, j], images[3 * row + j])
    with pytest.raises(ValueError, match="sequences of 4"):
        pack_interleaved({"image": images, "text": text}, 4, pad_id=0)


def test_flamingo_interleaved_positions_read_their_own_image(lm_run, tmp_path):
    """An interleaved sequence of two pairs, gates open: the first caption's logits equal the single-pair model's
    on image 1 alone; changing image 2 leaves them unchanged and changes the second caption's; changing image 1
    changes both (the second through the text). Through train(): the data stream packs the pairs the dataset
    draws, and the LM stays bit-identical."""
    import flax

    from vlm_jax.data.interleave import pack_interleaved
    from vlm_jax.train.objective import get_objective
    from vlm_jax.train.trainer import train

    lm_dir, lm_params = lm_run
    config = _flamingo_config(lm_dir, "model.interleave=2")
    obj = get_objective(config)
    model = obj.model()
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (1, 2, 32, 32, 3)).astype(np.float32)
    first, second = (np.asarray(obj.data.tokenize([c]))[0] for c in ("a red apple", "two small cats"))
    n1 = int(np.sum(first != obj.ids["pad"]))
    packed = pack_interleaved({"image": images[0], "text": np.stack([first, second])}, 2, obj.ids["pad"])
    inputs = obj.decoder_inputs(packed["text"])
    params = flax.core.meta.unbox(model.init(jax.random.key(1), packed["image"], inputs, packed["media"])["params"])
    flat = traverse.flatten_dict(params, sep="/")
    params = traverse.unflatten_dict({k: (np.float32(0.7) if k.endswith("_gate") else v) for k, v in flat.items()},
                                     sep="/")

    def logits(imgs):
        return np.asarray(model.apply({"params": params}, imgs, inputs, packed["media"])[0][2])

    got = logits(packed["image"])
    (_, _, single), _ = model.apply({"params": params}, images[:, 0], inputs[:, :n1])
    np.testing.assert_allclose(got[:, :n1], np.asarray(single), atol=2e-5)
    other2 = packed["image"].copy()
    other2[:, 1] = rng.uniform(-1, 1, other2[:, 1].shape)
    changed = logits(other2)
    np.testing.assert_array_equal(changed[:, :n1], got[:, :n1])
    assert not np.allclose(changed[:, n1:], got[:, n1:], atol=1e-4)
    other1 = packed["image"].copy()
    other1[:, 0] = rng.uniform(-1, 1, other1[:, 0].shape)
    changed = logits(other1)
    assert not np.allclose(changed[:, :n1], got[:, :n1], atol=1e-4)
    assert not np.allclose(changed[:, n1:], got[:, n1:], atol=1e-4)
    # the training stream: 16 sequences packed from the 32 pairs the dataset itself draws
    stream = iter(obj.train_data(16, 0, 0, 1))
    pairs = iter(obj.data.train(32, 0, 0, 1))
    batch, want = next(stream), pack_interleaved(next(pairs), 2, obj.ids["pad"])
    assert set(batch) == {"image", "text", "media"}
    for key in batch:
        np.testing.assert_array_equal(np.asarray(batch[key]), want[key], err_msg=key)
    out = train(config, tmp_path / "interleaved")
    trained = traverse.flatten_dict(jax.device_get(out["state"].params), sep="/")
    for path, value in lm_params.items():
        np.testing.assert_array_equal(trained[path], value, err_msg=path)
    assert out["setup"].abstract_batch(16)["image"].shape == (16, 2, 32, 32, 3)


def test_blip2_stage2_from_two_sources(lm_run, tmp_path):
    """Stage 2 starts from a stage-1 run (image encoder, Q-Former) and the LM run at once (`init_from.more`): every
    selected array is copied (counted against the sources' own parameter lists), the frozen LM and image encoder
    come out bit-identical, and a stage-1 parameter filled twice is refused."""
    from vlm_jax.config import apply_overrides, load_config
    from vlm_jax.train.init_from import InitFromError
    from vlm_jax.train.trainer import finalize_config, train

    lm_dir, lm_params = lm_run
    common = [ONE, "progress=False", "checkpoint.every_steps=0", "checkpoint.async_save=False"]
    s1 = apply_overrides(finalize_config(load_config("experiments/emoji_blip2.py:size=test,steps=2,batch=16")),
                         common + ["evals.sets=[]"])
    stage1 = traverse.flatten_dict(jax.device_get(train(s1, tmp_path / "s1")["state"].params), sep="/")
    c = finalize_config(load_config(f"experiments/emoji_frozen_lm.py:lm={lm_dir},size=test,steps=2,batch=16,"
                                    f"bridge=blip2,qformer={tmp_path / 's1'}"))
    c = apply_overrides(c, common + ["evals.sets=[]"])
    out = train(c, tmp_path / "s2")
    params = traverse.flatten_dict(jax.device_get(out["state"].params), sep="/")
    for path, value in {**lm_params, **{p: v for p, v in stage1.items() if p.startswith("img/")}}.items():
        np.testing.assert_array_equal(params[path], value, err_msg=path)
    rows = [json.loads(line) for line in (tmp_path / "s2" / "metrics.jsonl").read_text().splitlines()]
    copied = {r["source"]: r["copied"] for r in rows if r.get("split") == "init_from" and "source" in r}
    want_q = sum(1 for p in stage1 if p.startswith("img/") or (p.startswith("qformer/") and "embedding" not in p))
    assert copied == {f"{lm_dir} (step 3)": len(lm_params), f"{tmp_path / 's1'} (step 2)": want_q}
    assert all(f"mapper/qformer/{p[len('qformer/'):]}" in params for p in stage1
               if p.startswith("qformer/") and "embedding" not in p)
    with c.unlocked():  # the same LM arrays from a second source: refused, naming both
        c.init_from.more = [*c.init_from.more, dict(workdir=str(lm_dir), include="^decoder/")]
    with pytest.raises(InitFromError, match="filled by two init_from sources"):
        train(c, tmp_path / "twice")


def test_self_resurrecting_gates_follow_the_papers_equations():
    """VisualGPT's unit against its equations, from the module's own intermediate values (the gate's pre-activation,
    the cross-attention output): B_v = g·[g > τ], B_l = (1 − g)·[1 − g > τ], out = B_v·v + B_l·x; with a bias
    near the thresholds both gates are cut somewhere."""
    import flax

    from vlm_jax.models.decoder import SelfResurrectingFusion

    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 5, 16)).astype(np.float32)
    context = rng.normal(size=(2, 7, 12)).astype(np.float32)
    unit = SelfResurrectingFusion(num_heads=2, threshold=0.3, bias_init=0.0)
    params = flax.core.meta.unbox(unit.init(jax.random.key(0), x, context)["params"])
    params["gate"]["kernel"] = params["gate"]["kernel"] * 8  # spread g over (0, 1)
    out, state = unit.apply({"params": params}, x, context, capture_intermediates=True)
    inter = state["intermediates"]
    h = np.asarray(inter["gate"]["__call__"][0], np.float64)
    v = np.asarray(inter["cross_attn"]["__call__"][0], np.float64)
    g = 1 / (1 + np.exp(-h))
    b_vis = np.where(g > 0.3, g, 0.0)
    b_lan = np.where(1 - g > 0.3, 1 - g, 0.0)
    np.testing.assert_allclose(np.asarray(out), b_vis * v + b_lan * x, rtol=1e-5, atol=1e-6)
    assert (b_vis == 0).any() and (b_lan == 0).any() and ((b_vis > 0) & (b_lan > 0)).any()


@pytest.mark.parametrize("bridge", ["clipcap", "flamingo"])
def test_bridges_answer_prompted_tasks(bridge, lm_run, tmp_path):
    """A bridge on multitask_pali's prompted tasks in the LM's tokenizer: the loss reads the prompt; cached greedy
    answers after the prompt equal a brute-force argmax loop over the teacher-forced logits; through train()
    (Flamingo) the LM stays bit-identical and every task reports exact match against its references."""
    import flax

    from vlm_jax.models.decoder import start_decoding, step_fn
    from vlm_jax.models.decoding import greedy
    from vlm_jax.train.objective import get_objective
    from vlm_jax.train.trainer import train

    lm_dir, lm_params = lm_run
    config = (_bridge_config if bridge == "clipcap" else _flamingo_config)(
        lm_dir, "evals.scoring=False", "evals.max_items=4",
        **({} if bridge == "clipcap" else {"bridge": bridge}), data="multitask")
    obj = get_objective(config)
    assert obj.prompted and obj.data.prompt_len == 16
    model = obj.model()
    rng = np.random.default_rng(0)
    image = rng.uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    prompts = np.asarray(obj.data.tokenize_prompt(["what emoji is this?", "which group?"]))
    other = np.asarray(obj.data.tokenize_prompt(["caption en", "caption de"]))
    text = np.asarray(obj.data.tokenize(["red apple", "animals & nature"]))
    params = flax.core.meta.unbox(model.init(jax.random.key(1), image, obj.decoder_inputs(text),
                                             prompt=prompts)["params"])
    flat = traverse.flatten_dict(params, sep="/")  # Flamingo: open the gates, so the image reaches the answer
    params = traverse.unflatten_dict({k: (np.float32(0.7) if k.endswith("_gate") else v) for k, v in flat.items()},
                                     sep="/")
    batch = {"image": image, "text": text, "prompt": prompts}
    loss = lambda b: float(obj.loss(params, None, b, jax.random.key(0), train=False)[0])  # noqa: E731
    assert abs(loss(batch) - loss(dict(batch, prompt=other))) > 1e-4  # the prompt is read
    context, _ = model.apply({"params": params}, image, prompts, method="encode")
    cache, ctx_cache = start_decoding(model, params, context, 2)
    ids = obj.ids
    step = step_fn(model, params, ctx_cache)
    bos = np.full((2,), ids["bos"], np.int32)  # the first cached step (the prompt prefilled, its pads hidden) ...
    first, _ = step(bos, cache, np.zeros((2,), np.int32))
    (_, _, forced), _ = model.apply({"params": params}, image, bos[:, None], prompt=prompts)  # ... = teacher forcing
    np.testing.assert_allclose(np.asarray(first), np.asarray(forced)[:, 0], atol=2e-5)
    got = np.asarray(greedy(step, cache, bos, max_len=6, eos_id=ids["eos"], pad_id=ids["pad"]))
    from steps import brute_force_greedy

    for row in range(2):
        last = lambda t, r=row: model.apply({"params": params}, image[r:r + 1], t,  # noqa: E731
                                            prompt=prompts[r:r + 1])[0][2][0, -1]
        assert got[row].tolist() == brute_force_greedy(last, [ids["bos"]], 6, ids)
    if bridge == "clipcap":
        return
    out = train(config, tmp_path / "prompted")
    trained = traverse.flatten_dict(jax.device_get(out["state"].params), sep="/")
    for path, value in lm_params.items():
        np.testing.assert_array_equal(trained[path], value, err_msg=path)
    evals = json.loads((tmp_path / "prompted" / "results.json").read_text())["evals"]
    for task in ("emoji_name", "emoji_group", "translate_de"):
        assert 0.0 <= evals[f"tasks/{task}/all/exact/model"] <= 1.0
        assert evals[f"tasks/{task}/all/items"] == 4
    assert "tasks/caption_en/all/CIDEr-D/model" in evals


def test_prompted_data_is_refused_where_no_prompt_is_read(lm_run):
    """An objective whose loss ignores prompts refuses prompted data; a bridge on it refuses caption eval sets."""
    from vlm_jax.config import apply_overrides, load_config
    from vlm_jax.train.objective import get_objective
    from vlm_jax.train.trainer import finalize_config

    cappa = load_config("experiments/emoji_cappa.py:size=test")
    cappa.data = load_config("experiments/multitask_pali.py:size=test").data
    with pytest.raises(ValueError, match="'cappa' reads no task prompt"):
        get_objective(finalize_config(cappa))
    config = finalize_config(load_config(f"experiments/emoji_frozen_lm.py:lm={lm_run[0]},size=test,data=multitask"))
    with pytest.raises(ValueError, match="evaluated on its own tasks"):
        get_objective(apply_overrides(config, ["evals.sets=['emoji']"]))
