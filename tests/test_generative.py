"""CoCa and CapPa: loss terms against float64 NumPy, CLS / parallel-prediction masks, KV-cached generation through
the evaluators' functions, the scoring classifier against brute force, and sharded runs equal one device."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from steps import np_cross_entropy as _np_cross_entropy
from steps import run_steps as _run
from vlm_jax.config import apply_overrides, load_config
from vlm_jax.evals.captioning import cider_d
from vlm_jax.evals.generation import CaptionEvaluator, ScoringClassifier, scoring_queries
from vlm_jax.evals.zeroshot import EvalSet
from vlm_jax.losses.generative import shift_right
from vlm_jax.train.trainer import Setup, finalize_config

B = 16
TINY = ["batch_size=16", "fsdp_min_size=0", "optim.warmup_steps=1", "optim.name=sgd", "optim.momentum=0.9",
        "optim.lr=0.1", "model.image.num_heads=4", "model.decoder.num_heads=4"]


def _setup(name, mesh=(("data", 1),), more=()):
    c = finalize_config(load_config(f"experiments/emoji_{name}.py:size=test"))
    return Setup(apply_overrides(c, TINY + [f"mesh={list(mesh)!r}", *more]))


def _batches(setup, n=3, seed=0):
    """Random images; real captions of the tokenizer, so lengths (and padding) vary."""
    rng = np.random.default_rng(seed)
    data = setup.objective.data
    s = data.image_size
    words = ["cat", "grinning face", "flag: japan", "a picture of a red apple.", "an emoji of kangaroo.", "x"]
    out = []
    for _ in range(n):
        texts = [" ".join(rng.choice(words, rng.integers(1, 4))) for _ in range(B)]
        out.append({"image": rng.uniform(-1, 1, (B, s, s, 3)).astype(np.float32), "text": data.tokenize(texts)})
    return out


@pytest.fixture(scope="module")
def coca(data_dir):
    setup = _setup("coca")
    state = setup.init_state(jax.random.key(0))
    return setup, jax.device_get(state.params)


@pytest.fixture(scope="module")
def cappa(data_dir):
    setup = _setup("cappa")
    state = setup.init_state(jax.random.key(0))
    return setup, jax.device_get(state.params)


def _np_infonce(zimg, ztxt, t):
    logits = t * np.asarray(zimg, np.float64) @ np.asarray(ztxt, np.float64).T

    def ce(lg):
        lg = lg - lg.max(1, keepdims=True)
        return float(np.mean(np.log(np.exp(lg).sum(1)) - np.diag(lg)))
    return (ce(logits) + ce(logits.T)) / 2


def test_coca_loss_is_weighted_contrastive_plus_captioning_in_float64(coca):
    setup, params = coca
    obj = setup.objective
    batch = {k: jnp.asarray(v) for k, v in _batches(setup, 1)[0].items()}
    text = np.asarray(batch["text"])
    loss, (metrics, _) = obj.loss(params, {}, batch, jax.random.key(1), train=False)
    (zimg, ztxt, logits), aux = obj.model().apply({"params": params}, batch["image"],
                                                  shift_right(batch["text"], obj.ids["bos"]))
    con = _np_infonce(zimg, ztxt, float(aux["t"]))
    cap = _np_cross_entropy(logits, text, text != obj.ids["pad"])
    np.testing.assert_allclose(float(metrics["contrastive_loss"]), con, rtol=1e-5)
    two_tower = obj.loss_fn(zimg, ztxt, aux["t"])[0]  # the two-tower loss on the same embeddings
    np.testing.assert_allclose(float(metrics["contrastive_loss"]), float(two_tower), rtol=1e-6)
    np.testing.assert_allclose(float(metrics["caption_loss"]), cap, rtol=1e-5)
    np.testing.assert_allclose(float(loss), 1.0 * con + 2.0 * cap, rtol=1e-5)
    assert (text == obj.ids["pad"]).any() and (text[:, -1] == obj.ids["pad"]).any()  # padding really was masked


def test_coca_text_embedding_is_the_cls_of_the_unimodal_blocks(coca):
    setup, params = coca
    obj, model = setup.objective, setup.objective.model()
    batch = _batches(setup, 1)[0]
    inputs = shift_right(jnp.asarray(batch["text"]), obj.ids["bos"])
    (_, ztxt, _), _ = model.apply({"params": params}, batch["image"], inputs)
    alone = model.apply({"params": params}, inputs, method="embed_text")  # no image: what zero-shot uses
    np.testing.assert_allclose(alone, ztxt, rtol=1e-5, atol=1e-6)
    other = model.apply({"params": params}, batch["image"][::-1], inputs)[0][1]
    np.testing.assert_allclose(other, ztxt, rtol=1e-5, atol=1e-6)  # the text embedding never sees the image
    # the CLS reads every real token: change the last real input token of row 0
    last = int(np.sum(np.asarray(inputs[0]) != 0)) - 1
    changed = inputs.at[0, last].set((inputs[0, last] + 5) % 1000 + 3)
    assert not np.allclose(model.apply({"params": params}, changed, method="embed_text")[0], alone[0], atol=1e-6)


def test_coca_decoder_is_causal_and_cross_attends_every_image_token(coca):
    setup, params = coca
    obj, model = setup.objective, setup.objective.model()
    batch = _batches(setup, 1)[0]
    inputs = shift_right(jnp.asarray(batch["text"]), obj.ids["bos"])
    context, _ = model.apply({"params": params}, batch["image"], method="encode")
    base = model.apply({"params": params}, inputs, context, method="logits")
    changed = model.apply({"params": params}, inputs.at[:, 5].set(7), context, method="logits")
    np.testing.assert_allclose(changed[:, :5], base[:, :5], rtol=1e-5, atol=1e-6)
    assert not np.allclose(changed[:, 5:], base[:, 5:])
    for j in range(context.shape[1]):  # every pooled image token is read
        moved = model.apply({"params": params}, inputs, context.at[:, j].add(1.0), method="logits")
        assert not np.allclose(moved, base, atol=1e-6), j


def _uncached_greedy(model, params, context, max_len, bos):
    """Greedy decoding by re-running the full (uncached) decoder on the growing prefix: the argmax tokens
    [N, max_len] (fed on whatever EOS is) and their float64 log-probs [N, max_len, V]. The decoder is causal, so
    position i's logits over a fixed-length buffer read only tokens 0 … i (one compiled call per step)."""
    n = jax.tree.leaves(context)[0].shape[0]
    logits_of = jax.jit(lambda p, t, c, i: jnp.take(model.apply({"params": p}, t, c, method="logits"), i, axis=1))
    tokens, lps = np.full((n, max_len), bos, np.int32), []
    for i in range(max_len):
        logits = logits_of(params, jnp.asarray(tokens), context, i)
        lps.append(np.asarray(jax.nn.log_softmax(np.asarray(logits, np.float64)), np.float64))
        if i + 1 < max_len:
            tokens[:, i + 1] = lps[-1].argmax(-1)
    return np.concatenate([tokens[:, 1:], lps[-1].argmax(-1)[:, None].astype(np.int32)], axis=1), np.stack(lps, 1)


def _ended(tokens, eos, pad):
    """Tokens with every position after a row's first EOS set to pad."""
    out = np.array(tokens)
    for row in out:
        hit = np.flatnonzero(row == eos)
        if len(hit):
            row[hit[0] + 1:] = pad
    return out


def _teacher_forced_greedy(model, params, images, ids, max_len):
    """Greedy decoding by re-running the full (uncached) decoder on the growing prefix (EOS, then pad)."""
    context, _ = model.apply({"params": params}, images, method="encode")
    return _ended(_uncached_greedy(model, params, context, max_len, ids["bos"])[0], ids["eos"], ids["pad"])


def _with_eos_bias(params, eos, bias):
    """Parameters whose EOS logit is raised by `bias` (the decoder head's bias): nothing else changes."""
    dec = dict(params["decoder"])
    dec["head"] = dict(dec["head"], bias=jnp.asarray(dec["head"]["bias"]).at[eos].add(bias))
    return dict(params, decoder=dec)


def _planted_eos(params, argmax, lps, ids):
    """(parameters with the EOS logit raised by a bias that ends some rows early while others run to the end,
    the greedy tokens they give), from the uncached greedy run: raising EOS alone keeps every other token's
    order, so row r ends at its first step where the best token beats EOS by less than the bias."""
    eos, n = ids["eos"], argmax.shape[1]
    margin = lps.max(-1) - lps[..., eos]  # 0 where EOS is the argmax
    lows = np.sort(np.unique(margin.min(1)))
    for bias in (lows[:-1] + lows[1:]) / 2:
        end = [int(np.argmax(m < bias)) if (m < bias).any() else n for m in margin]
        if bias > 0 and min(end) < n - 1 and max(end) == n and np.abs(margin - bias).min() > 1e-3:
            break
    else:
        raise AssertionError(f"no EOS bias ends some rows early and leaves others: {margin.min(1)}")
    want = np.array(argmax)
    for r, e in enumerate(end):
        if e < n:
            want[r, e], want[r, e + 1:] = eos, ids["pad"]
    return _with_eos_bias(params, eos, float(bias)), want


@pytest.mark.parametrize("name", ["coca", "cappa"])
def test_cached_generation_equals_uncached_greedy(name, coca, cappa):
    """Cached greedy captions equal the uncached argmax loop, also with EOS planted so that some rows end early
    (EOS, then pad) while the loop goes on for the others."""
    setup, params = {"coca": coca, "cappa": cappa}[name]
    obj = setup.objective
    fns, ids, model = obj.caption_fns, obj.ids, obj.model()
    images = _batches(setup, 1)[0]["image"][:5]
    context, _ = model.apply({"params": params}, images, method="encode")
    argmax, lps = _uncached_greedy(model, params, context, fns.max_len, ids["bos"])
    np.testing.assert_array_equal(fns.generate_tokens(params, images), _ended(argmax, ids["eos"], ids["pad"]))
    planted, want = _planted_eos(params, argmax, lps, ids)
    np.testing.assert_array_equal(fns.generate_tokens(planted, images), want)


def check_beam_search_with_eos(setup, params, images, prompts=None, k=2):
    """Cached beam search (context keys/values once per image, read by its beams) with EOS planted within reach:
    every hypothesis' score is its uncached teacher-forced log-probability over the length norm, some end early
    (EOS, then pad) and some run to max_len; the evaluators' beam search returns the best ones."""
    from vlm_jax.models.decoder import start_decoding, step_fn
    from vlm_jax.models.decoding import beam_search

    obj = setup.objective
    ids, model = obj.ids, obj.model()
    fns = obj.caption_fns.with_options(beam_size=k)
    n, alpha, b = fns.max_len, fns.length_penalty, len(images)
    ptok = None if prompts is None else jnp.asarray(fns.prompt_tokens(prompts, b))
    context, _ = model.apply({"params": params}, images, ptok, method="encode")
    planted, _ = _planted_eos(params, *_uncached_greedy(model, params, context, 3, ids["bos"]), ids)

    @jax.jit
    def run(p, context):
        cache, context_cache = start_decoding(model, p, context, b)
        return beam_search(step_fn(model, p, context_cache), cache, jnp.full((b,), ids["bos"]), max_len=n,
                           eos_id=ids["eos"], pad_id=ids["pad"], beam_size=k, length_penalty=alpha)

    seqs, scores = map(np.asarray, run(planted, context))
    flat = seqs.reshape(-1, n)
    unmasked = model.clone(decoder=dict(model.decoder, pad_id=-1))  # a generated pad id is an ordinary input here
    rows = jax.tree.map(lambda x: jnp.repeat(x, k, axis=0), context)
    logits = unmasked.apply({"params": planted}, shift_right(jnp.asarray(flat), ids["bos"]), rows, method="logits")
    lp = np.take_along_axis(np.asarray(jax.nn.log_softmax(np.asarray(logits, np.float64)), np.float64),
                            flat[..., None], -1)[..., 0]
    length = np.array([int(np.argmax(r == ids["eos"])) + 1 if ids["eos"] in r else n for r in flat])
    for i, r in enumerate(flat):
        assert (r[length[i]:] == ids["pad"]).all()
    want = np.array([lp[i, :length[i]].sum() for i in range(len(flat))]) / ((5 + length) / 6) ** alpha
    np.testing.assert_allclose(scores.reshape(-1), want, rtol=1e-4, atol=1e-4)
    assert (length < n).any() and (length == n).any()  # EOS ended some hypotheses, others ran to max_len
    np.testing.assert_array_equal(fns.generate_tokens(planted, images, prompts), seqs[:, 0])


def test_cached_beam_search_equals_uncached_log_probs_with_eos(coca):
    setup, params = coca
    check_beam_search_with_eos(setup, params, _batches(setup, 1)[0]["image"][:5])


@pytest.fixture(scope="module")
def coca_dp8(data_dir):
    setup = _setup("coca", [("data", 8)])
    return setup, setup.init_state(jax.random.key(0)).params  # the coca fixture's parameters, on 8 devices


def test_sharded_and_sampled_generation(coca, coca_dp8):
    """On 8 devices the cached greedy captions are the same; sampling with a fixed key equals an uncached loop
    drawing with the same per-step keys."""
    from vlm_jax.models.decoding import sample_logits

    setup, params = coca
    obj = setup.objective
    images = _batches(setup, 1)[0]["image"][:5]
    dp8, sharded = coca_dp8
    np.testing.assert_array_equal(dp8.objective.caption_fns.generate_tokens(sharded, images),
                                  obj.caption_fns.generate_tokens(params, images))
    fns = obj.caption_fns.with_options(sampling=dict(temperature=1.5, top_k=20, top_p=0.95, seed=3))
    got = fns.generate_tokens(params, images)
    model, ids = obj.model(), obj.ids
    context, _ = model.apply({"params": params}, _pad(images, fns.batch_size), method="encode")
    logits_of = jax.jit(lambda p, t, c, i: jnp.take(model.apply({"params": p}, t, c, method="logits"), i, axis=1))
    tokens, drawn = np.full((fns.batch_size, fns.max_len), ids["bos"], np.int32), []
    for i in range(fns.max_len):  # causal: position i reads tokens 0 … i of the fixed-length buffer
        logits = logits_of(params, jnp.asarray(tokens), context, i)
        drawn.append(np.asarray(sample_logits(logits, jax.random.fold_in(jax.random.key(3), i), temperature=1.5,
                                              top_k=20, top_p=0.95)))
        if i + 1 < fns.max_len:
            tokens[:, i + 1] = drawn[-1]
    want = _ended(np.stack(drawn, 1)[:5], ids["eos"], ids["pad"])
    np.testing.assert_array_equal(got, want)
    assert not np.array_equal(got, obj.caption_fns.generate_tokens(params, images))  # it did sample


def _hlo_shape(dtype, shape):
    """An array type as XLA's HLO text writes it (e.g. f32[16,16,4,8])."""
    name = {"float32": "f32", "bfloat16": "bf16", "bool": "pred", "int32": "s32"}[str(dtype)]
    return f"{name}[{','.join(map(str, shape))}]"


def test_compiled_beam_search_keeps_the_caches_sharded(coca_dp8):
    """The compiled beam-search loop under an 8-device data mesh: the self-attention cache (B·k rows) and the
    context cache (B rows: once per image) stay split over the devices (per-device shapes in the while loop's
    state), and the full (unsharded) cache never appears, e.g. gathered to reorder beams."""
    from vlm_jax.models.decoder import start_decoding

    setup, params = coca_dp8
    k = 2
    fns = setup.objective.caption_fns.with_options(beam_size=k)
    mesh, model, b = setup.mesh, fns.model, fns.batch_size
    images = fns._put(np.zeros((b, 32, 32, 3), np.float32), mesh)
    hlo = fns._fn("generate", mesh).lower(params, images, None).compile().as_text()
    loop = next(line for line in hlo.splitlines() if " while(" in line)
    state = loop[:loop.index(" while(")]
    cache, context_cache = jax.eval_shape(
        lambda p, x: start_decoding(model, p, model.apply({"params": p}, x, None, method="encode")[0], b),
        params, images)
    n = mesh.devices.size
    checked = 0
    for leaves, rows in ((jax.tree.leaves(cache), b * k), (jax.tree.leaves(context_cache), b)):
        for x in (x for x in leaves if x.ndim >= 2):  # the key / value / validity buffers
            if x.dtype != bool:  # (an all-true validity mask may be folded away)
                assert _hlo_shape(x.dtype, (rows // n, *x.shape[1:])) in state, (x.shape, rows)
            assert _hlo_shape(x.dtype, (rows, *x.shape[1:])) not in hlo, (x.shape, rows)
            checked += 1
    assert checked == 9  # key, value, validity: 2 blocks' self-attention, 1 block's cross-attention


def _pad(x, n):
    return np.concatenate([x, np.repeat(x[-1:], n - len(x), axis=0)])


def test_scoring_classifier_equals_brute_force(cappa):
    setup, params = cappa
    fns = setup.objective.caption_fns
    rng = np.random.default_rng(3)
    images = rng.uniform(-1, 1, (5, 32, 32, 3)).astype(np.float32)
    names = ["cat", "dog face", "flag: japan", "red apple", "kangaroo", "x", "grinning face"]
    scores = fns.class_scores(params, images, names)  # chunked: 7 prompts, image batches of batch_size // 8
    for i in range(len(images)):
        ll, _ = fns.pair_scores(params, np.repeat(images[i:i + 1], len(names), 0), names)
        np.testing.assert_allclose(scores[i], ll, rtol=1e-5, atol=1e-4)
    ev = EvalSet(images=images, labels=np.array([0, 1, 2, 3, 4]), class_names=names, class_images=None)
    out = ScoringClassifier(fns, {"s": ev}, ["{}"])(params)
    want_top1 = np.mean(np.argmax(scores, 1) == ev.labels)
    assert out["s/all/top@1/model"] == pytest.approx(want_top1)
    assert out["s/all/top@1/chance"] == pytest.approx(1 / 7)
    assert list(scoring_queries(100, 10, 200)) == list(np.linspace(0, 99, 20).round().astype(int))


def test_scoring_classifier_encodes_each_image_once(cappa):
    """Class texts come in chunks; each image batch is encoded once for all of them (counted executions of the
    image encoder), with the scores of the shared evaluator functions."""
    import dataclasses

    from vlm_jax.evals.generation import CaptionFns
    from vlm_jax.models.captioner import Captioner

    calls = []

    class Counting(Captioner):
        def encode(self, image, prompt=None, train=False):
            jax.debug.callback(lambda: calls.append(1))
            return super().encode(image, prompt, train)

    setup, params = cappa
    obj = setup.objective
    model = obj.model()
    counting = Counting(**{f.name: getattr(model, f.name) for f in dataclasses.fields(model)
                           if f.name not in ("parent", "name")})
    fns = CaptionFns(counting, obj.ids, obj.data.tokenize, obj.data.decode, max_len=4, batch_size=16, class_chunk=3)
    images = np.random.default_rng(3).uniform(-1, 1, (5, 32, 32, 3)).astype(np.float32)
    names = ["cat", "dog face", "flag: japan", "red apple", "kangaroo", "x", "grinning face"]
    scores = fns.class_scores(params, images, names)  # 3 batches of 2 images × 3 chunks of ≤ 3 texts
    jax.effects_barrier()
    assert len(calls) == 3
    np.testing.assert_allclose(scores, obj.caption_fns.class_scores(params, images, names), rtol=1e-5, atol=1e-4)


def test_decode_max_len_beyond_the_decoder_is_a_config_error(data_dir):
    """Generation feeds max_len positions: more than the decoder's would overwrite its last cache slot."""
    setup = _setup("cappa", more=["evals.decode.max_len=17"])
    with pytest.raises(ValueError, match=r"evals\.decode\.max_len=17.* 16 "):
        setup.objective.caption_fns
    assert _setup("cappa", more=["evals.decode.max_len=16"]).objective.caption_fns.max_len == 16


def test_changed_decode_settings_compile_anew_and_captioning_leaves_the_evaluators_settings(cappa, tmp_path):
    """A changed max_len / length_penalty gives the new setting's output, not the stale compiled one's; a run's
    caption(beam=…, sample=…) uses a copy of the evaluators' functions, whose settings stay."""
    from vlm_jax.api import TrainedRun
    from vlm_jax.models.decoder import start_decoding, step_fn
    from vlm_jax.models.decoding import beam_search

    setup, params = cappa
    obj = setup.objective
    fns, ids, model = obj.caption_fns, obj.ids, obj.model()
    images = _batches(setup, 1)[0]["image"][:5]
    greedy = fns.generate_tokens(params, images)
    fns.max_len = 5
    try:
        short = fns.generate_tokens(params, images)
    finally:
        fns.max_len = 16
    np.testing.assert_array_equal(short, greedy[:, :5])  # decoding is causal: the first five tokens

    context, _ = model.apply({"params": params}, images, method="encode")
    argmax, lps = _uncached_greedy(model, params, context, 3, ids["bos"])
    planted, _ = _planted_eos(params, argmax, lps, ids)  # EOS within reach: the length penalty matters

    def beam(alpha):
        """Best hypotheses of a direct beam search with length penalty alpha."""
        cache, context_cache = start_decoding(model, planted, context, len(images))
        seqs, _ = beam_search(step_fn(model, planted, context_cache), cache, jnp.full((len(images),), ids["bos"]),
                              max_len=16, eos_id=ids["eos"], pad_id=ids["pad"], beam_size=2, length_penalty=alpha)
        return np.asarray(seqs[:, 0])

    want = {alpha: beam(alpha) for alpha in (0.0, 4.0)}
    assert not np.array_equal(want[0.0], want[4.0])
    fns.beam_size = 2
    try:
        for alpha in (0.0, 4.0):
            fns.length_penalty = alpha
            np.testing.assert_array_equal(fns.generate_tokens(planted, images), want[alpha])
    finally:
        fns.beam_size, fns.length_penalty = 1, 0.6

    run = TrainedRun(tmp_path, setup, params, 0)
    sampled = run.caption(images, sample=dict(temperature=2.0, seed=1))
    assert run.caption(images, beam=2) == fns.with_options(beam_size=2).generate(params, images)
    assert (fns.beam_size, fns.sampling) == (1, None)
    np.testing.assert_array_equal(fns.generate_tokens(params, images), greedy)
    assert sampled != obj.data.decode(greedy)  # the copy did sample


def test_caption_evaluator_scores_the_generated_captions(cappa):
    setup, params = cappa
    fns = setup.objective.caption_fns
    rng = np.random.default_rng(4)
    images = rng.uniform(-1, 1, (6, 32, 32, 3)).astype(np.float32)
    refs = [["a cat."], ["a dog", "dog face"], ["flag"], ["x y"], ["an apple"], ["kangaroo"]]
    ev = EvalSet(images=images, labels=np.arange(6), class_names=[r[0] for r in refs], class_images=None,
                 references=refs, caption_pool_pixels=images[::-1], caption_pool_texts=[r[0] for r in refs][::-1])
    out = CaptionEvaluator(fns, {"s": ev}, verbose=False)(params)
    gen = fns.generate(params, images)
    assert out["s/all/CIDEr-D/model"] == pytest.approx(cider_d(dict(enumerate(gen)), dict(enumerate(refs))))
    # the pixel NN of image i in the reversed pool is itself → its own first reference
    assert out["s/all/CIDEr-D/pixel"] == pytest.approx(cider_d({i: r[0] for i, r in enumerate(refs)},
                                                               dict(enumerate(refs))))
    ll, n = fns.pair_scores(params, images[[i for i, r in enumerate(refs) for _ in r]], [x for r in refs for x in r])
    assert out["s/perplexity"] == pytest.approx(np.exp(-ll.sum() / n.sum()), rel=1e-6)


def test_cappa_parallel_rows_get_mask_inputs_and_bidirectional_attention(cappa):
    setup, params = cappa
    obj, model = setup.objective, setup.objective.model()
    batch = {k: jnp.asarray(v) for k, v in _batches(setup, 1)[0].items()}
    parallel = jnp.asarray([True, False] * (B // 2))
    inputs = obj.masked_inputs(batch["text"], parallel)
    teacher = np.asarray(shift_right(batch["text"], obj.ids["bos"]))
    np.testing.assert_array_equal(np.asarray(inputs)[::2], obj.ids["mask"])  # chosen rows: all MASK
    np.testing.assert_array_equal(np.asarray(inputs)[1::2], teacher[1::2])  # others: teacher forcing
    run = lambda tok: model.apply({"params": params}, batch["image"], tok, parallel=parallel)[0][2]  # noqa: E731
    base, moved = run(inputs), run(inputs.at[:, 6].set(5))
    assert not np.allclose(moved[::2, :6], base[::2, :6], atol=1e-6)  # parallel rows see later positions
    np.testing.assert_allclose(moved[1::2, :6], base[1::2, :6], rtol=1e-5, atol=1e-6)  # causal rows do not
    # the objective's loss on a batch is the float64 cross-entropy of the logits of its chosen rows' inputs
    rng = jax.random.key(7)
    chosen = obj.parallel_rows(rng, B, True)
    loss, (metrics, _) = obj.loss(params, {}, batch, rng, train=True)
    logits = model.apply({"params": params}, batch["image"], obj.masked_inputs(batch["text"], chosen),
                         parallel=chosen)[0][2]
    text = np.asarray(batch["text"])
    np.testing.assert_allclose(float(loss), _np_cross_entropy(logits, text, text != 0), rtol=1e-5)
    assert float(metrics["parallel_fraction"]) == pytest.approx(float(np.mean(chosen)))
    draws = np.mean([np.asarray(obj.parallel_rows(jax.random.key(s), 256, True)) for s in range(20)])
    assert abs(draws - 0.75) < 4 * np.sqrt(0.75 * 0.25 / (20 * 256))  # the configured fraction (binomial bound)
    assert not np.asarray(obj.parallel_rows(rng, B, False)).any()  # evaluation is always autoregressive


@pytest.fixture(scope="module")
def coca_reference(data_dir):
    setup = _setup("coca")
    batches = _batches(setup)
    return batches, _run(setup, batches)


@pytest.mark.parametrize("mesh,more", [
    ([("data", 8)], ()), ([("fsdp", 8)], ()), ([("data", 4), ("tensor", 2)], ()),
    ([("data", 8)], ("loss.impl=ring",)), ([("data", 2)], ("grad_accum_steps=2",))])
def test_sharded_coca_equals_one_device(coca_reference, mesh, more):
    batches, (want_losses, want_params, _) = coca_reference
    setup = _setup("coca", mesh, more)
    losses, params, state = _run(setup, batches)
    np.testing.assert_allclose(losses, want_losses, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), params, want_params)
    specs = {str(x.sharding.spec) for x in jax.tree.leaves(state.params)}
    if mesh[0][0] == "fsdp":
        assert any("fsdp" in s for s in specs), specs
    if len(mesh) > 1:
        assert any("tensor" in s for s in specs), specs
    if "loss.impl=ring" in more:
        assert "shard_map" in str(setup.train_step.jaxpr())


@pytest.mark.slow
def test_cappa_through_train_evaluators_and_caption_tool(tmp_path, data_dir, capsys):
    """train() → the caption / scoring evaluators on the emoji sets → `tools.caption` on an image file."""
    from vlm_jax.data import emoji
    from vlm_jax.evals.metrics import pixel_features
    from vlm_jax.tools import caption
    from vlm_jax.train.trainer import train

    c = apply_overrides(finalize_config(load_config("experiments/emoji_cappa.py:size=test,steps=3,batch=16")),
                        ["evals.scoring_pairs=20000", "checkpoint.every_steps=3", "mesh=[('data', 1)]"])
    out = train(c, tmp_path / "run")
    ev = out["evals"]
    setup, params = out["setup"], out["state"].params
    # the pixel-NN captioner, recomputed: nearest seen-concept training drawing by correlation, its eval caption
    cross = setup.objective.data.eval_sets(["emoji"])["emoji/cross"]
    nearest = np.argmax(pixel_features(cross.pixel_images) @ pixel_features(cross.caption_pool_pixels).T, 1)
    want = cider_d({i: cross.caption_pool_texts[j] for i, j in enumerate(nearest)}, dict(enumerate(cross.references)))
    assert ev["caption/emoji/cross/all/CIDEr-D/pixel"] == pytest.approx(want)
    assert len(cross.references[0]) == 4 and cross.references[0][0].startswith("an emoji of ")
    assert ev["scoring/emoji/cross/num_queries"] == len(scoring_queries(len(cross.labels), 1871, 20000))
    assert 1.0 < ev["caption/emoji/cross/perplexity"] < setup.objective.ids["vocab"] * 2
    assert "zeroshot/emoji/cross/all/top@1/model" not in ev  # CapPa has no embeddings: scoring is its zero-shot
    # the caption tool restores the checkpoint and prepares a file like the training drawings
    from vlm_jax.data import ops

    path = tmp_path / "kangaroo.png"
    raw = emoji.render_rgba("🦘", "openmoji")  # transparent background, uncropped
    raw.save(path)
    capsys.readouterr()
    caption.main(["--workdir", str(tmp_path / "run"), "--image", str(path)])
    printed = capsys.readouterr().out.strip().splitlines()[-1].split("\t")
    image = caption.load_image(path, 32)
    np.testing.assert_allclose(image, ops.normalize(ops.resize(emoji.render("🦘", "openmoji", 64), 32)), atol=1e-6)
    assert printed == [str(path), setup.objective.caption_fns.generate(params, image[None])[0]]


@pytest.mark.slow
def test_coca_on_tux_paint_through_train(tmp_path, data_dir):
    """CoCa on the Tux Paint captions: zero-shot retrieval, generated-caption and scoring metrics in one run."""
    from vlm_jax.data import tuxpaint
    from vlm_jax.evals.metrics import pixel_features
    from vlm_jax.train.trainer import train

    c = apply_overrides(finalize_config(load_config("experiments/tuxpaint_captioning.py:objective=coca,size=test,steps=2,batch=16")),
                        ["mesh=[('data', 1)]"])
    ev = train(c, tmp_path / "run")["evals"]
    test, tr = tuxpaint.load_split(data_dir, "test"), tuxpaint.load_split(data_dir, "train")
    from vlm_jax.data.image_text import PIXEL_BASELINE_SIZE, _prep_images

    small = lambda x: _prep_images(x, PIXEL_BASELINE_SIZE)  # noqa: E731
    nearest = np.argmax(pixel_features(small(test["image"])) @ pixel_features(small(tr["image"])).T, 1)
    want = cider_d({i: tr["caption"][j] for i, j in enumerate(nearest)},
                   {i: [t] for i, t in enumerate(test["caption"])})
    assert ev["caption/tuxpaint/test/all/CIDEr-D/pixel"] == pytest.approx(want, rel=1e-6)
    assert ev["zeroshot/tuxpaint/test/all/top@1/chance"] == pytest.approx(1 / len(test["caption"]))
    assert ev["scoring/tuxpaint/test/num_queries"] == len(test["caption"])


@pytest.mark.parametrize("depth", [0, 1, -1])
def test_coca_refuses_a_unimodal_depth_outside_the_decoder(data_dir, depth):
    """unimodal_depth 0 reads the text embedding before any block (a constant); ≥ depth leaves no multimodal block."""
    c = finalize_config(load_config("experiments/emoji_coca.py:size=test"))
    total = int(c.model.decoder.get("depth", 6))
    bad = {0: 0, 1: total, -1: total + 1}[depth]
    with pytest.raises(ValueError, match=r"model\.decoder\.unimodal_depth"):
        Setup(apply_overrides(c, [f"model.decoder.unimodal_depth={bad}"]))
