"""Text decoder: KV-cached incremental decoding equals teacher forcing; causality, padding, cross-attention."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlm_jax.models.decoder import TextDecoder, step_fn

B, L, V, T, D = 3, 7, 23, 5, 32


@pytest.fixture(scope="module")
def model_and_params():
    model = TextDecoder(vocab_size=V, width=D, depth=2, mlp_dim=64, num_heads=4, max_len=L)
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(1, V, (B, L)), jnp.int32)
    context = jnp.asarray(rng.normal(size=(B, T, D)), jnp.float32)
    params = model.init(jax.random.key(0), tokens, context)["params"]
    return model, params, tokens, context


def _full(model, params, tokens, context):
    return model.apply({"params": params}, tokens, context)[0]


def test_incremental_decoding_equals_teacher_forcing(model_and_params):
    model, params, tokens, context = model_and_params
    want = _full(model, params, tokens, context)
    cache = model.init_cache(B, context)
    step = jax.jit(step_fn(model, params, context))
    for t in range(L):
        logits, cache = step(tokens[:, t], cache, jnp.int32(t))
        np.testing.assert_allclose(logits, want[:, t], rtol=1e-5, atol=1e-5, err_msg=f"position {t}")
    assert all(x.shape[0] == B for x in jax.tree.leaves(cache))  # every cache leaf is batch-major


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
    """Teacher-forced next-token log-probs after `prefix` [B, t] (no cache; pad masking off)."""
    logits = model.clone(pad_id=-1).apply({"params": params}, prefix, context)[0][:, -1]
    return np.asarray(jax.nn.log_softmax(logits), np.float64)


def test_greedy_decoding_of_the_decoder_equals_argmax_recompute(model_and_params):
    import functools

    from vlm_jax.models.decoding import greedy

    model, params, tokens, context = model_and_params
    eos, n = 5, L - 1
    run = jax.jit(functools.partial(greedy, step_fn(model, params, context), max_len=n, eos_id=eos, pad_id=0))
    got = np.asarray(run(model.init_cache(B, context), tokens[:, 0]))
    prefix, done = np.asarray(tokens[:, :1]), np.zeros(B, bool)
    want = np.zeros((B, n), np.int32)
    for i in range(n):
        nxt = _reference_logprobs(model, params, context, jnp.asarray(prefix)).argmax(-1)
        want[:, i] = np.where(done, 0, nxt)
        done |= nxt == eos
        prefix = np.concatenate([prefix, nxt[:, None]], axis=1)
    np.testing.assert_array_equal(got, want)


def test_beam_scores_equal_recomputed_log_probs_of_the_decoder(model_and_params):
    import functools

    from vlm_jax.models.decoding import beam_search

    model, params, tokens, context = model_and_params
    k, n, eos, alpha = 3, 4, 5, 0.6
    ctx = jnp.repeat(context, k, axis=0)  # the decoder's context rows follow the beams
    run = jax.jit(functools.partial(beam_search, step_fn(model, params, ctx), max_len=n, eos_id=eos, beam_size=k,
                                    length_penalty=alpha))
    seqs, scores = run(model.init_cache(B, context), tokens[:, 0])
    for b in range(B):
        for j in range(k):
            seq = np.asarray(seqs[b, j])
            length = int(np.argmax(seq == eos)) + 1 if eos in seq else n
            prefix, total = np.asarray(tokens[b:b + 1, :1]), 0.0
            for t in range(length):
                total += _reference_logprobs(model, params, context[b:b + 1], jnp.asarray(prefix))[0, seq[t]]
                prefix = np.concatenate([prefix, seq[None, t:t + 1]], axis=1)
            assert float(scores[b, j]) == pytest.approx(total / ((5 + length) / 6) ** alpha, rel=1e-4, abs=1e-4)


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
    cache = plain.init_cache(B, context)
    assert all(x.shape[0] == B for x in jax.tree.leaves(cache))
    step = jax.jit(step_fn(plain, ps, context))
    for t in range(L):
        logits, cache = step(tokens[:, t], cache, jnp.int32(t))
        np.testing.assert_allclose(logits, full[:, t], rtol=1e-5, atol=1e-5, err_msg=f"position {t}")
