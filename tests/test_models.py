"""Tests for vlm_jax.models: shapes, published sizes, posemb, masking, scan equivalence, sharding."""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlm_jax.models import (VARIANTS, TextTransformer, TwoTower, ViT, parse_variant, posemb_sincos_2d)

TINY_TXT = dict(vocab_size=100, width=32, depth=2, mlp_dim=64, num_heads=4, max_len=16)
TINY_IMG = dict(width=32, depth=2, mlp_dim=64, num_heads=4, patch_size=(8, 8))


def n_params(model: nn.Module, *inputs) -> int:
    """Parameter count via eval_shape (no compilation)."""
    shapes = jax.eval_shape(model.init, jax.random.key(0), *inputs)
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(nn.unbox(shapes["params"]))))


def vit_count(width: int, depth: int, mlp: int, patch: int, tokens: int, *, cls: bool, map_head: bool,
              classes: int = 0) -> int:
    """Closed-form ViT parameter count (independent of the model code)."""
    attn = 4 * (width * width + width)
    block = attn + 2 * width * mlp + mlp + width + 4 * width
    n = patch * patch * 3 * width + width + tokens * width + depth * block + 2 * width
    n += width if cls else 0
    n += (width + attn + 2 * width + 2 * width * mlp + mlp + width) if map_head else 0
    return n + (width * classes + classes if classes else 0)


# ---------------------------------------------------------------- ViT sizes / variants

IMG224 = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)


def test_vit_b16_param_count():
    n = n_params(ViT(variant="B/16", pool_type="tok", posemb="learn"), IMG224)
    assert n == vit_count(768, 12, 3072, 16, 196, cls=True, map_head=False)
    assert abs(n - 86.0e6) / 86.0e6 < 0.01  # "86M" backbone
    # timm vit_base_patch16_224 (with 1000-class head, cls posemb slot) has 86,567,656 params.
    nh = n_params(ViT(variant="B/16", pool_type="tok", num_classes=1000), IMG224)
    assert nh == 86_567_656 - 768


def test_vit_l16_and_so400m_param_counts():
    n = n_params(ViT(variant="L/16", pool_type="tok", scan=True), IMG224)
    assert abs(n - 304e6) / 304e6 < 0.01
    # timm vit_large_patch16_224: 304,326,632 (with 1000-class head and cls posemb slot).
    assert n + 1024 * 1000 + 1000 == 304_326_632 - 1024
    n = n_params(ViT(variant="So400m/14", pool_type="map", posemb="learn", scan=True), IMG224)
    assert n == vit_count(1152, 27, 4304, 14, 256, cls=False, map_head=True)
    assert abs(n - 428e6) / 428e6 < 0.01


def test_parse_variant():
    assert parse_variant("B/16") == dict(width=768, depth=12, mlp_dim=3072, num_heads=12, patch_size=(16, 16))
    assert parse_variant("So400m/14")["mlp_dim"] == 4304
    assert "patch_size" not in parse_variant("G")
    assert VARIANTS["g"] == (1408, 40, 6144, 16)
    with pytest.raises(ValueError, match="So400m"):
        parse_variant("XL/16")


# ---------------------------------------------------------------- posemb

def _sincos_ref(h: int, w: int, width: int, temperature: float = 10_000.) -> np.ndarray:
    """Loop-based float64 reference for the 2-D sincos layout."""
    q = width // 4
    out = np.zeros((h * w, width))
    for r in range(h):
        for c in range(w):
            for i in range(q):
                om = temperature ** (-i / (q - 1))
                out[r * w + c, [i, q + i, 2 * q + i, 3 * q + i]] = [
                    math.sin(c * om), math.cos(c * om), math.sin(r * om), math.cos(r * om)]
    return out[None]


@pytest.mark.parametrize("h,w,width", [(4, 4, 32), (3, 5, 16), (14, 14, 64)])
def test_posemb_sincos_2d(h, w, width):
    pe = posemb_sincos_2d(h, w, width)
    assert pe.shape == (1, h * w, width) and pe.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(pe), _sincos_ref(h, w, width), atol=1e-6)


# ---------------------------------------------------------------- ViT forward

@pytest.mark.parametrize("pool,posemb", [("gap", "sincos2d"), ("map", "learn"), ("tok", "learn"),
                                         ("none", "sincos2d")])
def test_vit_shapes_and_aux(pool, posemb):
    m = ViT(**TINY_IMG, pool_type=pool, posemb=posemb, num_classes=None if pool == "none" else 10)
    img = jnp.ones((2, 16, 24, 3))
    v = m.init(jax.random.key(0), img)
    out, aux = m.apply(v, img)
    n_tok = 6 + (pool == "tok")
    assert aux["stem"].shape == (2, 2, 3, 32)
    assert aux["with_posemb"].shape == (2, 6, 32)
    assert aux["encoded"].shape == (2, n_tok, 32)
    assert aux["encoder/block01"].shape == (2, n_tok, 32)
    if pool == "none":
        assert out.shape == (2, n_tok, 32) and "logits" not in aux
    else:
        assert aux["pre_logits"].shape == (2, 32) and out.shape == (2, 10)
        np.testing.assert_array_equal(out, aux["logits"])


def test_vit_head_zeroinit_and_dropout():
    m = ViT(**TINY_IMG, num_classes=5, head_zeroinit=True, dropout=0.5)
    img = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
    v = m.init(jax.random.key(0), img)
    out, _ = m.apply(v, img)
    np.testing.assert_array_equal(out, 0.0)
    _, a1 = m.apply(v, img, train=True, rngs={"dropout": jax.random.key(1)})
    _, a2 = m.apply(v, img, train=True, rngs={"dropout": jax.random.key(2)})
    assert not np.allclose(a1["encoded"], a2["encoded"])


def _eqns(jaxpr):
    """Every equation of a jaxpr, nested ones included."""
    for eqn in jaxpr.eqns:
        yield eqn
        for value in eqn.params.values():
            for sub in value if isinstance(value, (list, tuple)) else [value]:
                sub = getattr(sub, "jaxpr", sub)
                if hasattr(sub, "eqns"):
                    yield from _eqns(sub)


@pytest.mark.parametrize("residual", ["float32", "bfloat16"])
@pytest.mark.parametrize("tower", ["image", "text"])
def test_mixed_precision_policy_is_one_for_both_towers(tower, residual):
    """dtype_mm=bfloat16: every matmul takes bf16 operands, attention logits accumulate in f32, the residual
    stream has `residual_dtype`, and the final norm, pooled output and embeddings are float32; the result is
    within bf16 precision of float32."""
    policy = dict(dtype_mm="bfloat16", residual_dtype=residual, num_classes=8)
    if tower == "image":
        x = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
        m32, m16 = ViT(**TINY_IMG, pool_type="map", num_classes=8), ViT(**TINY_IMG, pool_type="map", **policy)
    else:
        x = jnp.asarray(_tokens())
        m32, m16 = TextTransformer(**TINY_TXT, num_classes=8), TextTransformer(**TINY_TXT, **policy)
    v = m32.init(jax.random.key(0), x)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(m16.init(jax.random.key(0), x)))
    o32, _ = m32.apply(v, x)
    o16, aux = m16.apply(v, x)
    blocks = {k: a.dtype for k, a in aux.items() if k.startswith("encoder/")}
    assert len(blocks) >= 3 and set(blocks.values()) == {jnp.dtype(residual)}, blocks
    assert o16.dtype == jnp.float32
    assert [aux[k].dtype for k in ("encoded", "pre_logits", "logits")] == [jnp.dtype(jnp.float32)] * 3
    dots = [e for e in _eqns(jax.make_jaxpr(m16.apply)(v, x).jaxpr)
            if e.primitive.name in ("dot_general", "conv_general_dilated")]
    assert dots and all(i.aval.dtype == jnp.bfloat16 for e in dots for i in e.invars)
    f32_logits = [e for e in dots if e.params.get("preferred_element_type") == jnp.float32]
    assert len(f32_logits) >= 2  # q·k of each attention layer
    err = float(np.linalg.norm(o16 - o32) / np.linalg.norm(o32))
    assert 1e-4 < err < (2e-2 if residual == "float32" else 4e-2), err  # bf16 used; only its round-off differs


# ---------------------------------------------------------------- text: padding invariance, causality

@pytest.fixture(scope="module")
def text_fns():
    """Jitted apply functions + params for the text tower in several configurations."""
    fns = {}
    for causal, pool in [(True, "last"), (True, "gap"), (False, "last"), (False, "gap"), (False, "map")]:
        m = TextTransformer(**TINY_TXT, causal=causal, pool_type=pool, num_classes=12)
        v = m.init(jax.random.key(0), jnp.ones((1, 8), jnp.int32))
        fns[causal, pool] = (jax.jit(m.apply), v)
    return fns


def _tokens() -> np.ndarray:
    rng = np.random.default_rng(0)
    tok = rng.integers(1, 100, size=(3, 8)).astype(np.int32)
    for i, n in enumerate([8, 5, 1]):
        tok[i, n:] = 0
    return tok


@pytest.mark.parametrize("causal,pool", [(True, "last"), (True, "gap"), (False, "last"), (False, "gap"),
                                         (False, "map")])
def test_text_padding_invariance(text_fns, causal, pool):
    apply, v = text_fns[causal, pool]
    tok = _tokens()
    out, aux = apply(v, jnp.asarray(tok))
    padded = np.concatenate([tok, np.zeros((3, 8), np.int32)], axis=1)
    out2, aux2 = apply(v, jnp.asarray(padded))
    assert out.shape == (3, 12) and aux["pre_logits"].shape == (3, 32)
    np.testing.assert_allclose(out2, out, atol=1e-5)
    for i, n in enumerate([8, 5, 1]):  # non-pad positions are unaffected too
        np.testing.assert_allclose(aux2["encoded"][i, :n], aux["encoded"][i, :n], atol=1e-5)
    if pool == "last":  # EOS = last non-pad token
        np.testing.assert_allclose(aux["pre_logits"][1], aux["encoded"][1, 4], atol=1e-6)


def test_text_causality(text_fns):
    apply, v = text_fns[True, "last"]
    tok = np.random.default_rng(1).integers(1, 100, size=(2, 8)).astype(np.int32)
    _, aux = apply(v, jnp.asarray(tok))
    j = 5
    tok2 = tok.copy()
    tok2[:, j] = (tok2[:, j] % 99) + 1
    _, aux2 = apply(v, jnp.asarray(tok2))
    np.testing.assert_allclose(aux2["encoded"][:, :j], aux["encoded"][:, :j], atol=1e-6)
    assert not np.allclose(aux2["encoded"][:, j:], aux["encoded"][:, j:])
    # The bidirectional tower does see the future.
    apply_b, vb = text_fns[False, "last"]
    _, b1 = apply_b(vb, jnp.asarray(tok))
    _, b2 = apply_b(vb, jnp.asarray(tok2))
    assert not np.allclose(b1["encoded"][:, :j], b2["encoded"][:, :j])


# ---------------------------------------------------------------- scan vs unrolled

def _stack_blocks(params: dict, depth: int, parent: str) -> dict:
    """Maps unrolled encoderblock_{i} params to the scanned, stacked layout."""
    p = dict(params)
    enc = dict(p[parent])
    blocks = [enc.pop(f"encoderblock_{i}") for i in range(depth)]
    enc["encoderblock"] = jax.tree.map(lambda *xs: jnp.stack(xs), *blocks)
    p[parent] = enc
    return p


def test_text_scan_matches_unrolled(remat: str = "minimal"):
    tok = jnp.asarray(_tokens())
    unrolled = TextTransformer(**TINY_TXT, num_classes=12)
    scanned = TextTransformer(**TINY_TXT, num_classes=12, scan=True, remat_policy=remat)
    v = nn.unbox(unrolled.init(jax.random.key(0), tok))
    vs_shape = jax.eval_shape(scanned.init, jax.random.key(0), tok)
    vs = {"params": _stack_blocks(v["params"], 2, "Encoder_0")}
    assert jax.tree.map(lambda x: x.shape, nn.unbox(vs_shape)) == jax.tree.map(lambda x: x.shape, vs)
    names = nn.get_partition_spec(vs_shape)["params"]["Encoder_0"]["encoderblock"]["attn"]["query_kernel"]
    assert tuple(names) == ("layers", "embed", "heads", "kv")

    def loss(fn, params):
        out, _ = fn({"params": params}, tok)
        return jnp.sum(out ** 2), out

    (l1, o1), g1 = jax.jit(jax.value_and_grad(lambda p: loss(unrolled.apply, p), has_aux=True))(v["params"])
    (l2, o2), g2 = jax.jit(jax.value_and_grad(lambda p: loss(scanned.apply, p), has_aux=True))(vs["params"])
    np.testing.assert_allclose(o2, o1, atol=1e-5)
    g1s = _stack_blocks(g1, 2, "Encoder_0")
    # float32 gradients up to ~16: the two programs sum in another order, so each entry may differ by
    # a few ulps of the largest term it accumulates (seen: 1.2e-5 on a 0.67 entry of a leaf whose max
    # is ~16 on one CPU model); the tolerance scales with each leaf's largest magnitude
    def close(a, b):
        np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-5 + 4e-6 * float(np.max(np.abs(b))))
    jax.tree.map(close, g2, g1s)


def test_vit_scan_matches_unrolled():
    img = jax.random.normal(jax.random.key(2), (2, 16, 16, 3))
    unrolled = ViT(**TINY_IMG, pool_type="map", num_classes=8)
    scanned = ViT(**TINY_IMG, pool_type="map", num_classes=8, scan=True, remat_policy="full")
    v = nn.unbox(unrolled.init(jax.random.key(0), img))
    o1, _ = unrolled.apply(v, img)
    o2, aux = scanned.apply({"params": _stack_blocks(v["params"], 2, "Transformer")}, img)
    np.testing.assert_allclose(o2, o1, atol=1e-5)
    assert "encoder/block00" not in aux and "encoded" in aux


# ---------------------------------------------------------------- two tower

def tiny_two_tower(**kw) -> TwoTower:
    txt = dict(TINY_TXT, max_len=8)
    return TwoTower(image=dict(TINY_IMG, pool_type="map"), text=txt, embed_dim=16, **kw)


RULES = [("embed", None), ("mlp", "model"), ("heads", "model"), ("kv", None), ("vocab", "model"),
         ("batch", "data")]


@pytest.fixture(scope="module")
def two_tower():
    """Tiny SigLIP-style TwoTower, initialised sharded under logical axis rules on a 1x1 mesh."""
    m = tiny_two_tower(temperature_init=10.0, bias_init=-10.0)
    img = jax.random.normal(jax.random.key(3), (3, 16, 16, 3))
    txt = jnp.asarray(_tokens()[:, :8])
    mesh = jax.make_mesh((1, 1), ("data", "model"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    with jax.set_mesh(mesh), nn.logical_axis_rules(RULES):
        abstract = jax.eval_shape(m.init, jax.random.key(0), img, txt)
        specs = nn.get_partition_spec(abstract)
        shardings = nn.logical_to_mesh_sharding(specs, mesh, RULES)
        v = jax.jit(m.init, out_shardings=shardings)(jax.random.key(0), img, txt)
    return m, v, img, txt, specs


def test_two_tower_outputs(two_tower):
    m, v, img, txt, _ = two_tower
    assert float(jnp.exp(v["params"]["t"].value)) == pytest.approx(10.0, rel=1e-6)
    assert float(v["params"]["b"].value) == -10.0
    apply = jax.jit(m.apply)
    (zi, zt), aux = apply(v, img, txt)
    assert zi.shape == zt.shape == (3, 16) and zi.dtype == zt.dtype == jnp.float32
    np.testing.assert_allclose(jnp.linalg.norm(zi, axis=-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(jnp.linalg.norm(zt, axis=-1), 1.0, atol=1e-5)
    for k in ("t", "t/parameter", "b", "img/unnormed", "txt/unnormed", "img/encoded", "txt/encoded",
              "img/pre_logits", "txt/pre_logits", "txt/embedded", "img/stem"):
        assert k in aux, k
    (zi2, none_t), aux_i = apply(v, img, None)
    (none_i, zt2), aux_t = apply(v, None, txt)
    assert none_t is None and none_i is None
    assert not any(k.startswith("txt/") for k in aux_i) and not any(k.startswith("img/") for k in aux_t)
    np.testing.assert_allclose(zi2, zi, atol=1e-6)
    np.testing.assert_allclose(zt2, zt, atol=1e-6)


@pytest.mark.parametrize("t0,b0", [(10.0, -10.0), (1 / 0.07, None)])
def test_two_tower_temperature_init(t0, b0):
    m = tiny_two_tower(temperature_init=t0, bias_init=b0)
    v = m.init(jax.random.key(0), None, None)  # towers are skipped: only t (and b) get created
    assert set(v["params"]) == ({"t", "b"} if b0 is not None else {"t"})
    _, aux = m.apply(v, None, None)
    np.testing.assert_allclose(float(aux["t"]), t0, rtol=1e-6)
    np.testing.assert_allclose(float(aux["t/parameter"]), math.log(t0), rtol=1e-6)
    if b0 is not None:
        assert float(aux["b"]) == b0


def test_two_tower_logical_sharding(two_tower):
    _, v, _, _, specs = two_tower
    p = specs["params"]
    assert tuple(p["img"]["Transformer"]["encoderblock_0"]["attn"]["query_kernel"]) == ("embed", "heads", "kv")
    assert tuple(p["img"]["Transformer"]["encoderblock_0"]["mlp"]["Dense_0"]["kernel"]) == ("embed", "mlp")
    assert tuple(p["txt"]["embedding"]["embedding"]) == ("vocab", "embed")
    qk = v["params"]["img"]["Transformer"]["encoderblock_0"]["attn"]["query_kernel"].value
    assert isinstance(qk.sharding, jax.sharding.NamedSharding)
    assert tuple(qk.sharding.spec) == (None, "model", None)


def test_minimal_remat_saves_each_projection_in_bf16():
    """remat_policy="minimal" keeps, per block, the six projection outputs (q, k, v, attention out, MLP in and out)
    in the matmul dtype: bf16 here, never the float32 accumulators the bias is added in (which would double the
    saved activations: So400m/14 at 512 per v5p chip needed 164 GiB instead of 90)."""
    import contextlib
    import io

    from vlm_jax.models import layers

    depth, b, length, width, mlp = 2, 4, 8, 32, 64
    enc = layers.Encoder(depth=depth, mlp_dim=mlp, num_heads=2, scan=True, remat_policy="minimal",
                         dtype_mm="bfloat16")
    x = jnp.ones((b, length, width), jnp.bfloat16)
    params = enc.init(jax.random.key(0), x)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        jax.ad_checkpoint.print_saved_residuals(lambda p, x: enc.apply(p, x)[0].astype(jnp.float32).sum(), params, x)
    per_layer = sorted(line.split(" ")[0] for line in out.getvalue().splitlines() if "output of scan" in line)
    qkv = f"bf16[{depth},{b},{length},2,{width // 2}]"
    assert per_layer == sorted([qkv] * 3 + [f"bf16[{depth},{b},{length},{width}]"] * 2
                               + [f"bf16[{depth},{b},{length},{mlp}]"]), per_layer
