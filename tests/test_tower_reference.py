"""The towers' forward passes (float32) against float64 NumPy references written from the papers' definitions
(tests/numpy_ref.py): the ViT for every pooling and position-embedding kind (with mask token and kept patches),
the text tower for every pooling (causal and bidirectional, padded), the decoder (cross-attention with a context
mask, CapPa's parallel rows, CoCa's CLS and unimodal blocks, prefix-LM) and PaLI's encoder; and the bf16 policy's
heads: vocabulary logits and embeddings accumulate and stay in float32 (only the matmul inputs are bf16)."""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import numpy_ref as ref
from vlm_jax.kernels import onednn
from vlm_jax.models.decoder import TextDecoder
from vlm_jax.models.pali import PaLI
from vlm_jax.models.text import TextTransformer
from vlm_jax.models.vit import ViT

D, HEADS, MLP, DEPTH = 16, 2, 32, 2
TOL = 5e-6  # float32 against float64 (seen: ≤ 6e-7), relative to the largest magnitude of each compared output
VOCAB, PAD = 29, 0


def random_params(model: nn.Module, seed: int, args: tuple, scale: dict[str, float] | None = None,
                  **kw) -> dict:
    """Random float32 params with the model's tree structure (from shapes: no init compiled): kernels N(0, 1/n)
    with n the product of all but their last dimension, biases N(0, 0.1²), LN scales 1 + N(0, 0.1²), embeddings,
    CLS and probes N(0, 0.5²); the top-level entries named in `scale` multiplied (tiny activations make the LN
    epsilon matter)."""
    rng = np.random.default_rng(seed)
    shapes = nn.unbox(jax.eval_shape(functools.partial(model.init, **kw), jax.random.key(0), *args)["params"])

    def draw(path: tuple, s: jax.ShapeDtypeStruct) -> np.ndarray:
        name = path[-1].key
        z = rng.normal(size=s.shape)
        if name == "scale":
            z = 1 + 0.1 * z
        elif "bias" in name:
            z = 0.1 * z
        elif "kernel" in name:
            z = z / np.sqrt(np.prod(s.shape[:-1]))
        else:
            z = 0.5 * z
        return z.astype(np.float32)

    out = jax.tree_util.tree_map_with_path(draw, shapes)
    for name, k in (scale or {}).items():
        out[name] = jax.tree.map(lambda a: a * np.float32(k), out[name])
    return out


def assert_close(got: jax.Array, want: np.ndarray, what: str, tol: float = TOL) -> None:
    """Elementwise |got − want| ≤ tol · max|want| (float32 round-off only)."""
    got = np.asarray(got, np.float64)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    err = np.max(np.abs(got - want)) / np.max(np.abs(want))
    assert err <= tol, f"{what}: max error {err:.2e} of the largest magnitude (tolerance {tol:.0e})"


def run(model: nn.Module, seed: int, args: tuple, scale: dict[str, float] | None = None, **kw):
    """(random params, model output of a jitted apply with them)."""
    params = random_params(model, seed, args, scale, **kw)
    return params, jax.jit(functools.partial(model.apply, **kw))({"params": params}, *args)


def padded_tokens(lengths: list[int], length: int, seed: int) -> np.ndarray:
    """Right-padded token ids [B, length] with the given numbers of real tokens."""
    tok = np.random.default_rng(seed).integers(1, VOCAB, size=(len(lengths), length)).astype(np.int32)
    for r, n in enumerate(lengths):
        tok[r, n:] = PAD
    return tok


# ---------------------------------------------------------------- ViT

IMAGES = np.random.default_rng(0).normal(size=(2, 8, 12, 3)).astype(np.float32)  # a 2 × 3 grid of 4 × 4 patches
VIT = dict(width=D, depth=DEPTH, mlp_dim=MLP, num_heads=HEADS, patch_size=(4, 4))
VIT_CASES = {  # pool, posemb, head, extras
    "gap-learn-head-tiny-activations": dict(pool_type="gap", posemb="learn", num_classes=5),
    "map-sincos2d-head": dict(pool_type="map", posemb="sincos2d", num_classes=5),
    "tok-learn": dict(pool_type="tok", posemb="learn"),
    "none-sincos2d-mask-token-keep": dict(pool_type="none", posemb="sincos2d", mask_token=True),
}


@pytest.mark.parametrize("case", list(VIT_CASES))
def test_vit_matches_float64_reference(case):
    """Patchify · E + positions (learned / 2-D sin-cos on a non-square grid), pre-LN blocks, final LN, pooling
    (gap / map / tok / none) and the linear head equal the float64 reference."""
    cfg = VIT_CASES[case]
    kw: dict = {}
    if cfg.get("mask_token"):
        kw = dict(patch_mask=jnp.asarray([[1, 0, 0, 1, 0, 0], [0, 0, 1, 0, 1, 1]], bool),
                  keep=jnp.asarray([[5, 0, 3, 1], [2, 4, 0, 5]], jnp.int32))
    scale = {"embedding": 1e-2, "pos_embedding": 1e-2} if "tiny" in case else None
    images = IMAGES * (1e-2 if scale else 1)
    params, (out, aux) = run(ViT(**VIT, **cfg), 1, (jnp.asarray(images),), scale, **kw)
    want = ref.vit(ref.f64(params), images.astype(np.float64), patch=(4, 4), posemb=cfg["posemb"],
                   pool=cfg["pool_type"], **{k: np.asarray(v) for k, v in kw.items()})
    for key in want:
        assert_close(aux[key], want[key], key)
    assert_close(out, want["logits" if "num_classes" in cfg else "pre_logits"], "output")


# ---------------------------------------------------------------- text tower

TEXT = dict(vocab_size=VOCAB, width=D, depth=DEPTH, mlp_dim=MLP, num_heads=HEADS, max_len=8, pad_id=PAD)
TOKENS = padded_tokens([7, 4, 1], 7, seed=2)
TEXT_CASES = {  # causal, pool, head
    "causal-last-head-tiny-activations": dict(causal=True, pool_type="last", num_classes=6),
    "bidirectional-first": dict(causal=False, pool_type="first"),
    "causal-gap-head": dict(causal=True, pool_type="gap", num_classes=6),
    "bidirectional-map-head": dict(causal=False, pool_type="map", num_classes=6),
}


@pytest.mark.parametrize("case", list(TEXT_CASES))
def test_text_tower_matches_float64_reference(case):
    """Token + learned position embeddings, causal / padding masks, pre-LN blocks, pooling (last real token,
    first, mean of the real tokens, MAP over the real tokens) and the head equal the float64 reference."""
    cfg = TEXT_CASES[case]
    scale = {"embedding": 1e-2, "pos_embedding": 1e-2} if "tiny" in case else None
    params, (out, aux) = run(TextTransformer(**TEXT, **cfg), 3, (jnp.asarray(TOKENS),), scale)
    want = ref.text_tower(ref.f64(params), TOKENS, pad_id=PAD, causal=cfg["causal"], pool=cfg["pool_type"])
    for key in want:
        assert_close(aux[key], want[key], key)
    assert_close(out, want["logits" if "num_classes" in cfg else "pre_logits"], "output")


# ---------------------------------------------------------------- decoder

DEC = dict(vocab_size=VOCAB, width=D, depth=DEPTH, mlp_dim=MLP, num_heads=HEADS, max_len=8, pad_id=PAD)
DEC_TOKENS = padded_tokens([6, 3, 1], 6, seed=4)
CONTEXT = np.random.default_rng(5).normal(size=(3, 5, D)).astype(np.float32)


def test_decoder_with_cross_attention_matches_float64_reference():
    """Causal self-attention with pad keys hidden, CapPa's bidirectional row, cross-attention to the context
    with its invalid tokens hidden, final LN and vocabulary logits equal the float64 reference."""
    parallel = np.asarray([False, True, False])
    context_valid = np.asarray([[1, 1, 1, 1, 1], [1, 1, 0, 1, 0], [0, 1, 1, 0, 0]], bool)
    params, (logits, aux) = run(TextDecoder(**DEC), 6, (jnp.asarray(DEC_TOKENS), jnp.asarray(CONTEXT)),
                                parallel=jnp.asarray(parallel), context_mask=jnp.asarray(context_valid))
    want = ref.text_decoder(ref.f64(params), DEC_TOKENS, CONTEXT.astype(np.float64), pad_id=PAD,
                            parallel=parallel, context_valid=context_valid)
    assert_close(aux["pre_logits"], want["pre_logits"], "pre_logits")
    assert_close(logits, want["logits"], "logits")


def test_coca_decoder_with_cls_matches_float64_reference():
    """CoCa's split decoder: a unimodal block where the appended CLS reads every real token and no token reads it,
    its normalised output, then a cross-attending block over the text only."""
    model = TextDecoder(**DEC, unimodal_depth=1, cls_token=True)
    params, (logits, aux) = run(model, 7, (jnp.asarray(DEC_TOKENS), jnp.asarray(CONTEXT)))
    want = ref.text_decoder(ref.f64(params), DEC_TOKENS, CONTEXT.astype(np.float64), pad_id=PAD)
    assert_close(aux["cls"], want["cls"], "cls")
    assert_close(logits, want["logits"], "logits")


def test_prefix_lm_decoder_matches_float64_reference():
    """Decoder-only prefix-LM: embedded prefix tokens and the first prefix_len text positions are seen by every
    position, the rest is causal, pads (also inside the bidirectional part) are hidden; logits cover the text."""
    tokens = DEC_TOKENS.copy()
    tokens[0, 1] = PAD  # a padded prompt inside the bidirectional part
    prefix = np.random.default_rng(8).normal(size=(3, 2, D)).astype(np.float32)
    prefix_len = np.asarray([3, 0, 2], np.int32)
    params, (logits, _) = run(TextDecoder(**DEC, cross_attention=False), 9, (jnp.asarray(tokens),),
                              prefix=jnp.asarray(prefix), prefix_len=jnp.asarray(prefix_len))
    want = ref.text_decoder(ref.f64(params), tokens, pad_id=PAD, prefix=prefix.astype(np.float64),
                            prefix_len=prefix_len)
    assert_close(logits, want["logits"], "logits")


# ---------------------------------------------------------------- PaLI

def test_pali_encoder_and_decoder_match_float64_reference():
    """PaLI: projected ViT tokens + embedded prompt through a bidirectional encoder (exact-erf GELU, prompt pads
    hidden), then the cross-attending decoder over that context."""
    prompt = padded_tokens([3, 1], 4, seed=10)
    text = padded_tokens([5, 2], 5, seed=11)
    model = PaLI(image=dict(VIT, posemb="learn"), prompt_len=4, decoder=dict(DEC, depth=1),
                 encoder=dict(width=D, depth=DEPTH, mlp_dim=MLP, num_heads=HEADS, act="gelu"))
    params, ((_, _, logits), aux) = run(model, 12, (jnp.asarray(IMAGES), jnp.asarray(text)),
                                        prompt=jnp.asarray(prompt))
    p = ref.f64(params)
    context, valid = ref.pali_context(p, IMAGES.astype(np.float64), prompt, patch=(4, 4), posemb="learn",
                                      pad_id=PAD, approximate=False)
    np.testing.assert_array_equal(aux["context"]["mask"], valid)
    assert_close(aux["context"]["tokens"], context, "context")
    want = ref.text_decoder(p["decoder"], text, context, pad_id=PAD, context_valid=valid)
    assert_close(logits, want["logits"], "logits")


# ---------------------------------------------------------------- bf16 policy: float32 heads

def _bf16(a: np.ndarray) -> np.ndarray:
    """Rounded to bfloat16, as float64."""
    return np.asarray(np.asarray(a, np.float32).astype(jnp.bfloat16), np.float64)


BF16_HEADS = {  # model, inputs
    "decoder-vocab-logits": (TextDecoder(**DEC, dtype_mm="bfloat16"), (DEC_TOKENS, CONTEXT)),
    "vit-embedding": (ViT(**VIT, num_classes=6, dtype_mm="bfloat16"), (IMAGES,)),
    "text-embedding": (TextTransformer(**TEXT, num_classes=6, dtype_mm="bfloat16"), (TOKENS,)),
}


def ffi_outputs(jaxpr) -> list:
    """The output avals of every oneDNN call in a jaxpr, sub-jaxprs (custom VJPs, jits) included."""
    out = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "ffi_call":
            out += [v.aval for v in eqn.outvars]
        for value in eqn.params.values():
            for sub in value if isinstance(value, (list, tuple)) else [value]:
                sub = getattr(sub, "jaxpr", sub)
                if hasattr(sub, "eqns"):
                    out += ffi_outputs(sub)
    return out


@pytest.mark.parametrize("onednn_kernel", [False, True], ids=["xla", "onednn"])
@pytest.mark.parametrize("case", list(BF16_HEADS))
def test_bf16_policy_heads_accumulate_and_return_float32(case, onednn_kernel):
    """dtype_mm=bfloat16: the head's output is bf16(pre_logits) · bf16(kernel) + bias accumulated and returned in
    float32 (float64 reference of the rounded operands), not rounded to bf16. With the oneDNN kernel the head's
    matmul is a kernel call writing float32 (checked in the trace and in its numbers)."""
    if onednn_kernel and not (case.startswith("decoder") and onednn.available()):
        pytest.skip("the oneDNN route is checked on the decoder, on CPUs where oneDNN has a bf16 matmul")
    model, inputs = BF16_HEADS[case]
    args = tuple(jnp.asarray(a) for a in inputs)
    params = random_params(model, 13, args)
    with onednn.scope(onednn_kernel):
        fn = lambda v, *a: model.apply(v, *a)  # noqa: E731  (a fresh function: traced in this scope)
        if onednn_kernel:
            calls = ffi_outputs(jax.make_jaxpr(fn)({"params": params}, *args).jaxpr)
            head = (DEC_TOKENS.size, VOCAB)
            assert [a.dtype for a in calls if a.shape == head] == [jnp.float32], calls
        out, aux = jax.jit(fn)({"params": params}, *args)
    head = ref.f64(params["head"])
    want = _bf16(aux["pre_logits"]) @ _bf16(head["kernel"]) + head["bias"]
    assert out.dtype == jnp.float32
    assert_close(out, want, "head output", tol=1e-6)
    got = np.asarray(out)
    assert np.mean(got != np.asarray(got.astype(jnp.bfloat16), np.float32)) > 0.9  # not bf16 values
