"""Memory-efficient contrastive kernels (gather, ring, chunked) vs the full losses; FILIP vs a NumPy loop."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlm_jax import sharding
from vlm_jax.losses import contrastive_loss, filip_loss, infonce_loss
from vlm_jax.losses.distributed import batch_axes

D = 16
T, BIAS = 12.0, -4.0
TOL = dict(rtol=1e-5, atol=1e-6)
MESHES = {"data8": [("data", 8)], "data2_fsdp4": [("data", 2), ("fsdp", 4)],
          "data4_tensor2": [("data", 4), ("tensor", 2)], "tensor8": [("tensor", 8)]}


def _unit(a: np.ndarray) -> np.ndarray:
    """Rows scaled to unit norm."""
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


@functools.cache
def _pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Correlated image/text embeddings (so accuracies lie strictly between 0 and 1) with duplicate pairs.

    Pairs 5 and n−1 repeat the perfectly matched pairs 3 and 1, so row/column 5 (n−1) has its maximum tied
    between index 3 (1) and itself: argmax picks the first, and the duplicate counts as a miss both ways.
    """
    rng = np.random.default_rng(n)
    x = _unit(rng.normal(size=(n, D)))
    y = _unit(x + 0.4 * rng.normal(size=(n, D)))
    for first, dup in ((3, 5), (1, n - 1)):
        y[first] = x[first]
        x[dup], y[dup] = x[first], y[first]
    return x.astype(np.float32), y.astype(np.float32)


def _value_and_grads(kind: str, impl: str, chunk: int, mesh_name: str | None, n: int) -> tuple:
    """(loss, metrics, grads wrt zimg, ztxt, t, b) as NumPy, computed inside jit (sharded over the mesh)."""

    def f(x, y, t, b):
        return contrastive_loss(kind, x, y, t, b, impl=impl, chunk_size=chunk)

    step = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2, 3), has_aux=True))
    x, y = _pairs(n)
    t, b = jnp.float32(T), jnp.float32(BIAS)
    if mesh_name is None:
        (loss, metrics), grads = step(x, y, t, b)
    else:
        mesh = _mesh(mesh_name)
        with jax.set_mesh(mesh):
            shard = sharding.batch_sharding(mesh)
            (loss, metrics), grads = step(jax.device_put(x, shard), jax.device_put(y, shard), t, b)
    return jax.device_get((loss, metrics, grads))


@functools.cache
def _mesh(name: str) -> jax.sharding.Mesh:
    """Mesh by test name."""
    return sharding.make_mesh(MESHES[name])


@functools.cache
def _reference(kind: str, n: int) -> tuple:
    """The full loss on one device, no mesh."""
    return _value_and_grads(kind, "full", 0, None, n)


def _assert_same(got: tuple, want: tuple) -> None:
    """Loss, metrics (accuracies exactly) and the four gradients agree."""
    np.testing.assert_allclose(got[0], want[0], **TOL)
    assert set(got[1]) == set(want[1])
    for k in want[1]:
        if k.startswith("acc/"):
            assert got[1][k] == want[1][k], k
        else:
            np.testing.assert_allclose(got[1][k], want[1][k], err_msg=k, **TOL)
    for name, g, w in zip(("zimg", "ztxt", "t", "b"), got[2], want[2]):
        np.testing.assert_allclose(g, w, err_msg=name, **TOL)


# -------------------------------------------------------------------------------------- distributed = full


@pytest.mark.parametrize("mesh_name", ["data8", "data2_fsdp4"])
@pytest.mark.parametrize("n", [16, 24, 64])
@pytest.mark.parametrize("impl", ["gather", "ring"])
@pytest.mark.parametrize("kind", ["infonce", "sigmoid"])
def test_distributed_equals_full(kind: str, impl: str, n: int, mesh_name: str):
    """Loss, metrics and gradients (zimg, ztxt, t, b) equal the full loss; catches gather-grad scaling bugs."""
    _assert_same(_value_and_grads(kind, impl, 0, mesh_name, n), _reference(kind, n))


def test_reference_metrics_are_informative():
    """The test data gives accuracies strictly inside (0, 1), and the duplicate rows flip an argmax."""
    _, metrics, _ = _reference("infonce", 64)
    for k in ("acc/i2t", "acc/t2i"):
        assert 0.0 < metrics[k] < 1.0
    x, y = _pairs(64)
    logits = x @ y.T
    for first, dup in ((3, 5), (1, 63)):  # exact ties resolved to the first index, both directions
        assert logits[dup, first] == logits[dup, dup] == logits[dup].max()
        assert np.argmax(logits[dup]) == np.argmax(logits[:, dup]) == first


@pytest.mark.parametrize("impl,chunk", [("ring", 4), ("gather", 4), ("ring", 2)])
@pytest.mark.parametrize("kind", ["infonce", "sigmoid"])
def test_chunked_distributed_equals_full(kind: str, impl: str, chunk: int):
    """Rows processed in chunks on each of 8 devices (8 rows per device)."""
    _assert_same(_value_and_grads(kind, impl, chunk, "data8", 64), _reference(kind, 64))


@pytest.mark.parametrize("impl,chunk,mesh_name", [("full", 4, None), ("full", 8, None), ("ring", 8, None),
                                                  ("gather", 4, "tensor8"), ("full", 8, "data8")])
@pytest.mark.parametrize("kind", ["infonce", "sigmoid"])
def test_chunked_single_device_equals_full(kind: str, impl: str, chunk: int, mesh_name: str | None):
    """The chunked one-device kernel: no mesh, a mesh without batch axes, or impl="full" on a sharded mesh."""
    _assert_same(_value_and_grads(kind, impl, chunk, mesh_name, 16), _reference(kind, 16))


@pytest.mark.parametrize("impl", ["gather", "ring"])
def test_mesh_with_tensor_axis(impl: str):
    """Batch over "data" only; the "tensor" axis replicates the loss computation."""
    assert batch_axes(_mesh("data4_tensor2")) == ("data",)
    _assert_same(_value_and_grads("infonce", impl, 0, "data4_tensor2", 16), _reference("infonce", 16))


def test_batch_axes():
    assert batch_axes(_mesh("data2_fsdp4")) == ("data", "fsdp")
    assert batch_axes(_mesh("tensor8")) == ()
    assert batch_axes(None) == ()


def test_explicit_mesh_argument_without_context_mesh():
    """mesh= works without jax.set_mesh (inputs placed on that mesh)."""
    mesh = _mesh("data8")
    x, y = _pairs(16)
    shard = sharding.batch_sharding(mesh)
    f = jax.jit(functools.partial(contrastive_loss, "sigmoid", impl="ring", mesh=mesh))
    loss, _ = f(jax.device_put(x, shard), jax.device_put(y, shard), T, BIAS)
    np.testing.assert_allclose(loss, _reference("sigmoid", 16)[0], **TOL)


def test_bad_arguments_name_valid_values():
    x = jnp.zeros((8, 4))
    with pytest.raises(ValueError, match="infonce"):
        contrastive_loss("softmax", x, x, 1.0)
    with pytest.raises(ValueError, match="ring"):
        contrastive_loss("infonce", x, x, 1.0, impl="pmap")
    with pytest.raises(ValueError, match="bias"):
        contrastive_loss("sigmoid", x, x, 1.0, impl="ring")
    with pytest.raises(ValueError, match="divide"):
        contrastive_loss("infonce", x, x, 1.0, impl="ring", chunk_size=3)
    with pytest.raises(ValueError, match=">= 0"):
        contrastive_loss("infonce", x, x, 1.0, chunk_size=-1)


def _temp_bytes(kind: str, impl: str, chunk: int, n: int, d: int = 32) -> int:
    """Per-device temp memory of the compiled forward+backward on 8 devices."""
    mesh = _mesh("data8")
    shard = sharding.batch_sharding(mesh)
    emb = jax.ShapeDtypeStruct((n, d), jnp.float32, sharding=shard)
    scalar = jax.ShapeDtypeStruct((), jnp.float32, sharding=sharding.replicated(mesh))

    def f(x, y, t, b):
        return contrastive_loss(kind, x, y, t, b, impl=impl, chunk_size=chunk)[0]

    with jax.set_mesh(mesh):
        compiled = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2, 3))).lower(emb, emb, scalar, scalar).compile()
    return compiled.memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("kind", ["infonce", "sigmoid"])
def test_ring_memory_is_quadratic_in_local_batch(kind: str):
    """Forward+backward of the ring never holds a b×B block (b = B/8); chunking shrinks it further."""
    n = 2048
    b = n // 8
    ring, ring_chunked, gather = (_temp_bytes(kind, "ring", 0, n), _temp_bytes(kind, "ring", 32, n),
                                  _temp_bytes(kind, "gather", 0, n))
    assert ring < b * n * 4 < gather
    assert ring <= 6 * b * b * 4
    assert ring_chunked < ring / 2


# ------------------------------------------------------------------------------------------------------ FILIP


def _np_filip(x, y, mx, my, t):
    """Float64 loop implementation of the FILIP loss (module doc of vlm_jax.losses.filip)."""
    n = len(x)
    s_i, s_t = np.zeros((n, n)), np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            sim = x[i][mx[i]] @ y[j][my[j]].T  # valid image tokens × valid text tokens
            s_i[i, j] = sim.max(axis=1).mean()  # each image token's best text token
            s_t[i, j] = sim.max(axis=0).mean()  # each text token's best image token

    def lse(a, axis):
        m = a.max(axis=axis)
        return m + np.log(np.exp(a - np.expand_dims(m, axis)).sum(axis=axis))

    i2t = np.mean(lse(t * s_i, 1) - t * np.diag(s_i))
    t2i = np.mean(lse(t * s_t, 0) - t * np.diag(s_t))
    return 0.5 * (i2t + t2i), i2t, t2i


def _tokens(n: int, ni: int, nt: int, d: int, seed: int = 0):
    """Unit-norm token embeddings with random padding (each sample keeps at least one token)."""
    rng = np.random.default_rng(seed)
    x, y = _unit(rng.normal(size=(n, ni, d))), _unit(rng.normal(size=(n, nt, d)))
    mx, my = rng.random((n, ni)) < 0.7, rng.random((n, nt)) < 0.6
    mx[:, 0] = my[:, 0] = True
    return x, y, mx, my


@pytest.mark.parametrize("chunk", [0, 2])
def test_filip_matches_numpy_loop(chunk: int):
    x, y, mx, my = _tokens(6, 5, 7, 8)
    want, i2t, t2i = _np_filip(x, y, mx, my, 5.0)
    loss, m = jax.jit(functools.partial(filip_loss, chunk_size=chunk))(
        jnp.float32(x), jnp.float32(y), my, 5.0, mx)
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    np.testing.assert_allclose([m["loss/i2t"], m["loss/t2i"]], [i2t, t2i], rtol=1e-5)
    assert i2t != pytest.approx(t2i)  # the two directions really differ


def test_filip_padding_is_ignored():
    """Garbage in padded tokens changes nothing."""
    x, y, mx, my = _tokens(4, 5, 6, 8, seed=1)
    x2, y2 = x.copy(), y.copy()
    x2[~mx], y2[~my] = 3.0, -2.0
    f = jax.jit(filip_loss)
    np.testing.assert_allclose(f(x2, y2, my, 2.0, mx)[0], f(x, y, my, 2.0, mx)[0], rtol=1e-6)


def test_filip_gradient_matches_finite_differences():
    x, y, mx, my = _tokens(3, 3, 4, 5, seed=2)
    t = 4.0
    grads = jax.jit(jax.grad(lambda a, b, s: filip_loss(a, b, my, s, mx)[0], argnums=(0, 1, 2)))(
        jnp.float32(x), jnp.float32(y), jnp.float32(t))
    eps = 1e-6
    for arg, g in ((0, grads[0]), (1, grads[1])):
        base = (x, y)[arg]
        num = np.zeros_like(base)
        for idx in np.ndindex(base.shape):
            hi, lo = base.copy(), base.copy()
            hi[idx] += eps
            lo[idx] -= eps
            args_hi = (hi, y) if arg == 0 else (x, hi)
            args_lo = (lo, y) if arg == 0 else (x, lo)
            num[idx] = (_np_filip(*args_hi, mx, my, t)[0] - _np_filip(*args_lo, mx, my, t)[0]) / (2 * eps)
        np.testing.assert_allclose(g, num, atol=2e-5)
    dt = (_np_filip(x, y, mx, my, t + eps)[0] - _np_filip(x, y, mx, my, t - eps)[0]) / (2 * eps)
    np.testing.assert_allclose(grads[2], dt, rtol=1e-4)


def test_filip_single_token_is_infonce():
    x, y = _pairs(16)
    ones = np.ones((16, 1), bool)
    got, gm = jax.jit(filip_loss)(x[:, None], y[:, None], ones, T)
    want, wm = infonce_loss(x, y, jnp.float32(T))
    np.testing.assert_allclose(got, want, rtol=1e-6)
    for k in wm:
        np.testing.assert_allclose(gm[k], wm[k], rtol=1e-6)
