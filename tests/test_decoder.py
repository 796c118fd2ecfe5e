"""Text decoder: KV-cached incremental decoding equals teacher forcing (the context's keys/values projected once per
image at prefill, read by every beam row); EOS ends rows in greedy and beam search; causality, padding,
cross-attention."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlm_jax.models.decoder import CONTEXT_CACHE, TextDecoder, start_decoding, step_fn

B, L, V, T, D = 3, 7, 23, 5, 32


@pytest.fixture(scope="module")
def model_and_params():
    model = TextDecoder(vocab_size=V, width=D, depth=2, mlp_dim=64, num_heads=4, max_len=L)
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(1, V, (B, L)), jnp.int32)
    context = jnp.asarray(rng.normal(size=(B, T, D)), jnp.float32)
    params = model.init(jax.random.key(0), tokens, context)["params"]
    return model, params, tokens, context


def _full(model, params, tokens, context, context_mask=None):
    return model.apply({"params": params}, tokens, context, context_mask=context_mask)[0]


def test_incremental_decoding_equals_teacher_forcing(model_and_params):
    model, params, tokens, context = model_and_params
    want = _full(model, params, tokens, context)
    cache, context_cache = start_decoding(model, params, context, B)
    step = jax.jit(step_fn(model, params, context_cache))  # a step reads the context only through its cache
    for t in range(L):
        logits, cache = step(tokens[:, t], cache, jnp.int32(t))
        np.testing.assert_allclose(logits, want[:, t], rtol=1e-5, atol=1e-5, err_msg=f"position {t}")
    assert all(x.shape[0] == B for x in jax.tree.leaves(cache))  # every cache leaf is batch-major


def test_context_cache_is_the_projected_context_once_per_image(model_and_params):
    """Prefill stores each block's context keys/values (float64 projection of the context) and its mask, one row
    per image; steps of r rows per image (beams) read them, equal to teacher forcing with the mask."""
    model, params, tokens, context = model_and_params
    mask = jnp.asarray(np.random.default_rng(1).random((B, T)) > 0.4).at[:, 0].set(True)
    cache = model.init_cache(B, context, mask)
    _, state = model.apply({"params": params, "cache": cache}, context, mask, method="prefill",
                           mutable=["cache", CONTEXT_CACHE])
    ctx = np.asarray(context, np.float64)
    for blk in ("block_00", "block_01"):
        p, got = nn.unbox(params[blk]["cross_attn"]), state[CONTEXT_CACHE][blk]["cross_attn"]
        for name in ("key", "value"):
            want = np.einsum("btd,dhk->bthk", ctx, np.asarray(p[f"{name}_kernel"], np.float64)) + p[f"{name}_bias"]
            np.testing.assert_allclose(got[name], want, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(got["valid"], mask)
    r = 2
    want = _full(model, params, tokens, context, mask)
    cache = jax.tree.map(lambda x: jnp.repeat(x, r, axis=0), state["cache"])  # rows b*r + j: image b
    step = jax.jit(step_fn(model, params, state[CONTEXT_CACHE]))
    for t in range(L):
        logits, cache = step(jnp.repeat(tokens[:, t], r), cache, jnp.int32(t))
        np.testing.assert_allclose(logits, np.repeat(want[:, t], r, axis=0), rtol=1e-5, atol=1e-5)
    assert not np.allclose(want, _full(model, params, tokens, context), atol=1e-4)  # the mask mattered


def test_causal_and_padding_invariant(model_and_params):
    model, params, tokens, context = model_and_params
    base = _full(model, params, tokens, context)
    changed = _full(model, params, tokens.at[:, 4].set((tokens[:, 4] + 1) % V), context)
    np.testing.assert_allclose(changed[:, :4], base[:, :4], rtol=1e-6, atol=1e-6)  # the past ignores the future
    assert not np.allclose(changed[:, 4:], base[:, 4:])
    padded = _full(model, params, tokens.at[:, 5:].set(0), context)
    np.testing.assert_allclose(padded[:, :5], base[:, :5], rtol=1e-6, atol=1e-6)


def test_cross_attention_reads_the_image_tokens(model_and_params):
    model, params, tokens, context = model_and_params
    base = _full(model, params, tokens, context)
    assert not np.allclose(_full(model, params, tokens, context + 1.0), base)
    text_only = TextDecoder(vocab_size=V, width=D, depth=1, mlp_dim=64, num_heads=4, max_len=L, cross_attention=False)
    p = text_only.init(jax.random.key(1), tokens)["params"]
    assert "cross_attn" not in p["block_00"]
    assert text_only.apply({"params": p}, tokens)[0].shape == (B, L, V)
    with pytest.raises(ValueError, match="context"):
        model.apply({"params": params}, tokens, None)


def test_attention_pooler_queries_are_independent_map_heads():
    from vlm_jax.models import AttentionPooler, MAPHead

    x = jax.random.normal(jax.random.key(2), (2, 9, D))
    pooler = AttentionPooler(num_queries=3, num_heads=4, mlp_dim=64)
    p = nn.unbox(pooler.init(jax.random.key(3), x)["params"])
    out = pooler.apply({"params": p}, x)
    assert out.shape == (2, 3, D)
    for j in range(3):
        one = dict(p, probe=p["probe"][:, j:j + 1])
        np.testing.assert_allclose(MAPHead(num_heads=4, mlp_dim=64).apply({"params": one}, x), out[:, j],
                                   rtol=1e-5, atol=1e-6)


def test_tensor_and_fsdp_sharded_decoder_equals_one_device(model_and_params):
    from vlm_jax import sharding as shd

    model, params, tokens, context = model_and_params
    want = _full(model, params, tokens, context)
    mesh = shd.make_mesh([("data", 1), ("fsdp", 2), ("tensor", 2)])
    boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), tokens, context)["params"])
    shardings = shd.tree_shardings(boxed, mesh, min_size=0)
    specs = {str(s.spec) for s in jax.tree.leaves(shardings)}
    assert any("tensor" in s for s in specs) and any("fsdp" in s for s in specs), specs
    sharded = jax.device_put(params, shardings)
    fn = shd.MeshJit(lambda p, t, c: model.apply({"params": p}, t, c)[0], mesh, shd.DEFAULT_RULES)
    got = fn(sharded, tokens, context)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert "all-reduce" in fn.compiled().as_text()  # the tensor-parallel matmuls really are split


def _reference_logprobs(model, params, context, prefix):
    """Teacher-forced next-token log-probs after `prefix` [B, t] (no cache; pad masking off), float64."""
    logits = model.clone(pad_id=-1).apply({"params": params}, prefix, context)[0][:, -1]
    return np.asarray(jax.nn.log_softmax(np.asarray(logits, np.float64)), np.float64)


def _with_eos_bias(params, eos, bias):
    """Parameters whose EOS logit is raised by `bias` (the head's bias): nothing else changes."""
    params = nn.unbox(params)
    return dict(params, head=dict(params["head"], bias=params["head"]["bias"].at[eos].add(bias)))


def _reference_trajectory(model, params, context, bos, n):
    """Uncached greedy: argmax tokens [B, n] (always fed on, whatever EOS is) and their log-probs [B, n, V]."""
    prefix, lps = np.asarray(bos)[:, None], []
    for _ in range(n):
        lps.append(_reference_logprobs(model, params, context, jnp.asarray(prefix)))
        prefix = np.concatenate([prefix, lps[-1].argmax(-1)[:, None]], axis=1)
    return prefix[:, 1:], np.stack(lps, axis=1)


def _ended(tokens, eos, pad=0):
    """Tokens with every position after a row's first EOS set to pad."""
    out = tokens.copy()
    for row in out:
        hit = np.flatnonzero(row == eos)
        if len(hit):
            row[hit[0] + 1:] = pad
    return out


def test_greedy_decoding_of_the_decoder_equals_argmax_recompute(model_and_params):
    """Cached greedy equals the uncached argmax loop; with a never-chosen token made EOS and its logit raised so
    that one row ends early and the others do not, that row holds EOS then pad (the EOS → pad branch)."""
    import functools

    from vlm_jax.models.decoding import greedy

    model, params, tokens, context = model_and_params
    n = L - 1

    def run(p, eos):
        cache, context_cache = start_decoding(model, p, context, B)
        fn = jax.jit(functools.partial(greedy, step_fn(model, p, context_cache), max_len=n, eos_id=eos, pad_id=0))
        return np.asarray(fn(cache, tokens[:, 0]))

    argmax, lps = _reference_trajectory(model, params, context, tokens[:, 0], n)
    np.testing.assert_array_equal(run(params, 5), _ended(argmax, 5))
    # EOS: the likeliest token that greedy never picks; raising its logit by `bias` keeps the other tokens' order,
    # so row b ends at its first step where the best token beats EOS by less than `bias`
    unused = np.setdiff1d(np.arange(V), argmax)
    eos = int(unused[np.argmax(lps.mean((0, 1))[unused])])
    margin = lps.max(-1) - lps[..., eos]
    first = int(np.argmin(margin[:, :-1].min(1)))
    others = np.delete(margin, first, axis=0).min()
    assert margin[first, :-1].min() < others  # a bias between the two ends row `first` early, no other row
    bias = float(margin[first, :-1].min() + others) / 2
    end = int(np.argmax(margin[first] < bias))
    want = argmax.copy()
    want[first, end], want[first, end + 1:] = eos, 0
    np.testing.assert_array_equal(run(_with_eos_bias(params, eos, bias), eos), want)


def test_beam_scores_equal_recomputed_log_probs_of_the_decoder(model_and_params):
    """Every returned hypothesis' score is its recomputed (uncached, float64) log-probability over the length
    norm; with EOS made likely some hypotheses end early, padded after EOS."""
    from vlm_jax.models.decoding import beam_search

    model, params, tokens, context = model_and_params
    k, n, alpha = 3, 4, 0.6
    first = _reference_logprobs(model, params, context, tokens[:, :1])
    eos = int(np.argsort(first.mean(0))[V // 2])  # a middling token …
    bias = float(np.min(first.max(-1) - first[:, eos])) - 0.5  # … raised to just below the top at step 0
    @jax.jit
    def run(p):
        cache, context_cache = start_decoding(model, p, context, B)  # the context cache: B rows, not B * k
        return beam_search(step_fn(model, p, context_cache), cache, tokens[:, 0], max_len=n, eos_id=eos,
                           beam_size=k, length_penalty=alpha)

    for p in (nn.unbox(params), _with_eos_bias(params, eos, bias)):
        seqs, scores = map(np.asarray, run(p))
        # uncached teacher forcing of every hypothesis at once: log p(seq_t | BOS, seq_<t) at each position t
        flat = seqs.reshape(B * k, n)
        inputs = np.concatenate([np.repeat(np.asarray(tokens[:, :1]), k, 0), flat[:, :-1]], axis=1)
        logits = model.clone(pad_id=-1).apply({"params": p}, jnp.asarray(inputs), jnp.repeat(context, k, 0))[0]
        lp = np.take_along_axis(np.asarray(jax.nn.log_softmax(np.asarray(logits, np.float64)), np.float64),
                                flat[..., None], axis=-1)[..., 0].reshape(B, k, n)
        for b in range(B):
            for j in range(k):
                seq = seqs[b, j]
                length = int(np.argmax(seq == eos)) + 1 if eos in seq else n
                assert (seq[length:] == 0).all()
                want = lp[b, j, :length].sum() / ((5 + length) / 6) ** alpha
                assert float(scores[b, j]) == pytest.approx(want, rel=1e-4, abs=1e-4)
    ended = (seqs[..., :-1] == eos).any(-1)
    assert ended.any() and not ended.all()  # the planted EOS ended some hypotheses early, not all


def test_scanned_decoder_equals_unrolled_and_decodes_with_its_cache():
    """scan=True stacks each run of identical blocks; with the unrolled parameters stacked it gives the same
    logits and CLS, and its KV cache (layer axis 1, batch-major) decodes like teacher forcing."""
    kw = dict(vocab_size=V, width=D, depth=3, unimodal_depth=1, cls_token=True, mlp_dim=64, num_heads=4, max_len=L)
    rng = np.random.default_rng(5)
    tokens = jnp.asarray(rng.integers(1, V, (B, L)), jnp.int32).at[0, 5:].set(0)
    context = jnp.asarray(rng.normal(size=(B, T, D)), jnp.float32)
    flat = TextDecoder(**kw)
    p = nn.unbox(flat.init(jax.random.key(0), tokens, context)["params"])
    scanned = TextDecoder(**kw, scan=True)
    ps = nn.unbox(scanned.init(jax.random.key(0), tokens, context)["params"])
    stack = lambda names: jax.tree.map(lambda *xs: jnp.stack(xs), *[p[n] for n in names])  # noqa: E731
    ps = dict(ps, blocks=stack(["block_00"]), multimodal_blocks=stack(["block_01", "block_02"]))
    ps.update({k: v for k, v in p.items() if not k.startswith("block_")})
    want, want_aux = flat.apply({"params": p}, tokens, context)
    got, got_aux = scanned.apply({"params": ps}, tokens, context)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_aux["cls"], want_aux["cls"], rtol=1e-5, atol=1e-5)
    plain = TextDecoder(**{**kw, "cls_token": False}, scan=True)
    tokens = jnp.where(tokens == 0, 1, tokens)  # decoding has no pad mask: compare on unpadded rows
    full = plain.apply({"params": ps}, tokens, context)[0]
    cache, context_cache = start_decoding(plain, ps, context, B)
    assert all(x.shape[0] == B for x in jax.tree.leaves((cache, context_cache)))
    step = jax.jit(step_fn(plain, ps, context_cache))
    for t in range(L):
        logits, cache = step(tokens[:, t], cache, jnp.int32(t))
        np.testing.assert_allclose(logits, full[:, t], rtol=1e-5, atol=1e-5, err_msg=f"position {t}")
