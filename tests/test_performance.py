"""Performance paths: the bf16 policy's dtypes and loss, attention kernels, the main command's host devices, and
the GPU benchmark's arithmetic (run on CPU)."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from steps import random_pairs, run_steps
from vlm_jax.config import apply_overrides, load_config
from vlm_jax.main import host_device_count, use_whole_cpu
from vlm_jax.kernels import onednn
from vlm_jax.models import layers
from vlm_jax.train.trainer import Setup, finalize_config, train

TINY = ["mesh=[('data', 1)]", "batch_size=16", "optim.warmup_steps=2", "optim.lr=0.003"]
BF16 = dict(dtype_mm="bfloat16", residual_dtype="bfloat16")


NEEDS_KERNEL = pytest.mark.skipif(not onednn.supported(), reason="oneDNN has no bf16 matmul on this CPU (no "
                                  "AVX512-BF16/AMX/AVX2-VNNI-2): bf16 dots take XLA's path, tested below")


def _setup(*more, towers=None):
    """The size=test two-tower model; `towers`: fields added to both towers (e.g. the bf16 policy)."""
    c = finalize_config(load_config("experiments/emoji_two_tower.py:size=test"))
    with c.unlocked():
        for tower in ("image", "text"):
            c.model[tower].update(towers or {})
    return Setup(apply_overrides(c, TINY + list(more)))


def _batches(setup, n):
    return random_pairs(setup, n)


def _eqns(jaxpr):
    """Every equation of a jaxpr, sub-jaxprs included."""
    for eqn in jaxpr.eqns:
        yield eqn
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                if hasattr(sub, "eqns") or hasattr(sub, "jaxpr"):
                    yield from _eqns(getattr(sub, "jaxpr", sub))


@pytest.fixture(scope="module")
def bf16_setup(data_dir):
    return _setup(towers=BF16)


def test_bf16_policy_keeps_state_loss_and_softmax_in_float32(bf16_setup):
    """With bf16 matmuls and residual stream: parameters, optimizer state and the loss stay float32, every
    exponential (softmax, log-sum-exp) runs in float32, and the towers' dots really take bf16 operands."""
    setup = bf16_setup
    state, batch = setup.abstract_state(), setup.abstract_batch(16)
    out_state, metrics = setup.train_step.eval_shape(state, batch)
    floats = [x for x in jax.tree.leaves((out_state.params, out_state.opt_state)) if jnp.issubdtype(x.dtype, jnp.floating)]
    assert floats and all(x.dtype == jnp.float32 for x in floats)
    assert metrics["loss"].dtype == jnp.float32
    eqns = list(_eqns(setup.train_step.jaxpr(state, batch).jaxpr))
    exps = [e for e in eqns if e.primitive.name == "exp"]
    assert exps and all(e.outvars[0].aval.dtype == jnp.float32 for e in exps)
    dots = [e for e in eqns if e.primitive.name in ("dot_general", "ffi_call")]
    bf16_dots = [e for e in dots if all(v.aval.dtype == jnp.bfloat16 for v in e.invars[:2])]  # (+ f32 bias)
    assert len(bf16_dots) > len(dots) / 2, (len(bf16_dots), len(dots))
    mixed = [e for e in dots if {v.aval.dtype for v in e.invars[:2]} == {jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16)}]
    assert not mixed, mixed[:2]  # no backward dot takes a float32 cotangent (a float32 matmul on GPU/TPU)
    # one CPU device: the dense layers use oneDNN where this CPU runs it, XLA's dot elsewhere
    assert any(e.primitive.name == "ffi_call" for e in dots) == onednn.supported()


def test_bf16_run_tracks_float32(bf16_setup):
    """20 steps on the same batches: the bf16 run's loss stays within 2% of the float32 run's at every step
    (bf16 keeps 8 mantissa bits: ~0.4% per rounding; the loss starts near log 16 ≈ 2.8)."""
    fp32 = _setup()
    batches = _batches(fp32, 20)
    want, _, _ = run_steps(fp32, batches)
    got, _, _ = run_steps(bf16_setup, batches)
    np.testing.assert_allclose(got, want, rtol=0.02)
    assert run_steps(bf16_setup, batches)[0] == got  # deterministic: concurrent kernel calls once raced
    assert want[-1] < want[0] - 0.1  # it is learning, so tracking means something


def test_xla_bf16_dot_takes_bf16_cotangents():
    """The XLA path of a bf16 · bf16 → float32 contraction (batch dims included, as in attention): float32 output,
    and gradients equal to the float64 products of the bf16-rounded cotangent, in bf16."""
    rng = np.random.default_rng(2)
    q = jnp.asarray(rng.normal(size=(2, 5, 3, 4)), jnp.bfloat16)
    k = jnp.asarray(rng.normal(size=(2, 7, 3, 4)), jnp.bfloat16)
    g = jnp.asarray(rng.normal(size=(2, 3, 5, 7)), jnp.float32)
    fn = lambda q, k: onednn.einsum("bqhk,bshk->bhqs", q, k, preferred_element_type=jnp.float32)  # noqa: E731
    out, vjp = jax.vjp(jax.jit(fn), q, k)
    q64, k64 = np.asarray(q, np.float64), np.asarray(k, np.float64)
    g64 = np.asarray(g.astype(jnp.bfloat16), np.float64)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(out), np.einsum("bqhk,bshk->bhqs", q64, k64), rtol=1e-5, atol=1e-5)
    dq, dk = vjp(g)
    assert dq.dtype == dk.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(dq, np.float64), np.einsum("bhqs,bshk->bqhk", g64, k64), rtol=1e-2, atol=2e-2)
    np.testing.assert_allclose(np.asarray(dk, np.float64), np.einsum("bhqs,bqhk->bshk", g64, q64), rtol=1e-2, atol=2e-2)
    eqns = [e for e in _eqns(jax.make_jaxpr(lambda q, k, g: jax.vjp(fn, q, k)[1](g))(q, k, g).jaxpr)
            if e.primitive.name == "dot_general"]
    assert len(eqns) == 3 and all(v.aval.dtype == jnp.bfloat16 for e in eqns[1:] for v in e.invars)


@NEEDS_KERNEL
def test_onednn_matmul_and_gradients_match_float64():
    """The oneDNN kernel (bf16 in, float32 out) and its VJP (two transposed calls) against NumPy float64 on the
    same bf16 values: float32 accumulation error only."""
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.normal(size=(37, 29)), jnp.bfloat16)
    b = jnp.asarray(rng.normal(size=(29, 13)), jnp.bfloat16)
    g = jnp.asarray(rng.normal(size=(37, 13)), jnp.bfloat16)
    a64, b64, g64 = (np.asarray(x, np.float64) for x in (a, b, g))
    out, vjp = jax.vjp(onednn.matmul, a, b)
    np.testing.assert_allclose(np.asarray(out), a64 @ b64, rtol=1e-5, atol=1e-5)
    da, db = vjp(g.astype(jnp.float32))
    assert da.dtype == db.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(da, np.float64), g64 @ b64.T, rtol=1e-2, atol=1e-2)  # bf16 results
    np.testing.assert_allclose(np.asarray(db, np.float64), a64.T @ g64, rtol=1e-2, atol=1e-2)
    x = jnp.asarray(rng.normal(size=(2, 5, 4, 3)), jnp.bfloat16)  # two contracting dims (attention's output)
    w = jnp.asarray(rng.normal(size=(4, 3, 6)), jnp.bfloat16)
    with onednn.scope(True):
        got = jax.jit(lambda x, w: onednn.einsum("bqhk,hkd->bqd", x, w, preferred_element_type=jnp.float32))(x, w)
        assert "ffi_call" in str(jax.make_jaxpr(lambda x, w: onednn.einsum("bqhk,hkd->bqd", x, w))(x, w))
    want = np.einsum("bqhk,hkd->bqd", np.asarray(x, np.float64), np.asarray(w, np.float64))
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
    bf16_out = jax.jit(lambda a, b: onednn.matmul(a, b, jnp.bfloat16))(a, b)  # written in bf16 by the kernel
    assert bf16_out.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(bf16_out, np.float64), a64 @ b64, rtol=1e-2, atol=1e-2)


@NEEDS_KERNEL
def test_onednn_linear_with_fused_bias_matches_float64():
    """`linear` (bias added inside the kernel, bf16 output) and its gradients against NumPy float64: dx in bf16,
    the kernel and bias gradients in float32 like the parameters."""
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(41, 24)), jnp.bfloat16)
    w = jnp.asarray(rng.normal(size=(24, 17)), jnp.bfloat16)
    bias = jnp.asarray(rng.normal(size=(17,)), jnp.float32)
    g = jnp.asarray(rng.normal(size=(41, 17)), jnp.bfloat16)
    x64, w64, b64, g64 = (np.asarray(v, np.float64) for v in (x, w, bias, g))
    out, vjp = jax.vjp(jax.jit(onednn.linear), x, w, bias)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out, np.float64), x64 @ w64 + b64, rtol=1e-2, atol=2e-2)
    dx, dw, db = vjp(g)
    assert (dx.dtype, dw.dtype, db.dtype) == (jnp.bfloat16, jnp.bfloat16, jnp.float32)  # dw: w's own dtype
    np.testing.assert_allclose(np.asarray(dx, np.float64), g64 @ w64.T, rtol=1e-2, atol=2e-2)
    np.testing.assert_allclose(np.asarray(dw, np.float64), x64.T @ g64, rtol=1e-2, atol=2e-2)
    np.testing.assert_allclose(np.asarray(db, np.float64), g64.sum(0), rtol=1e-5, atol=1e-5)


def test_onednn_only_on_one_cpu_device(bf16_setup):
    """bf16 dense layers become oneDNN calls on a one-device CPU mesh (counted by the FLOP counter, so the MFU
    meter still equals the jaxpr count); float32, or a sharded mesh (no SPMD rule for a custom call), keep XLA's dot."""
    from vlm_jax.scaling.flops import jaxpr_flops
    from vlm_jax.train.trainer import step_flops

    def jaxpr(setup):
        return setup.train_step.jaxpr(setup.abstract_state(), setup.abstract_batch(16))

    bf16 = jaxpr(bf16_setup)
    assert (onednn.TARGET in str(bf16)) == onednn.supported()
    assert jaxpr_flops(bf16) == pytest.approx(step_flops(bf16_setup), rel=0.02)
    assert onednn.TARGET not in str(jaxpr(_setup()))
    assert onednn.TARGET not in str(jaxpr(_setup("mesh=[('data', 2)]", towers=BF16)))


@pytest.mark.parametrize("impl", ["xla"])
def test_attention_kernels_agree(impl):
    """jax.nn.dot_product_attention (the cuDNN path's API; "xla" on CPU) = the einsum attention, masks included."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 5, 16)), jnp.float32)
    mask = jnp.asarray(rng.random((2, 1, 5, 5)) < 0.7) | jnp.eye(5, dtype=bool)[None, None]
    ref = layers.Attention(4, impl="einsum")
    params = ref.init(jax.random.key(0), x)
    other = layers.Attention(4, impl=impl)
    for m in (None, mask):
        np.testing.assert_allclose(other.apply(params, x, mask=m), ref.apply(params, x, mask=m), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="einsum"):
        layers.Attention(4, impl="flash").apply(params, x)


def test_main_uses_one_host_device_per_core(monkeypatch):
    """The main command's CPU device count: one per core, capped, dividing the batch; an explicit count wins."""
    assert host_device_count(256, 2) == 2
    assert host_device_count(256, 64) == 8
    assert host_device_count(6, 4) == 3 and host_device_count(7, 2) == 1
    # the oneDNN kernel runs on one-device meshes; without it a bf16 run is split like a float32 one
    assert host_device_count(256, 2, dtype="bfloat16") == (1 if onednn.supported() else 2)
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=3")
    assert use_whole_cpu(256) is None
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_foo=1")
    monkeypatch.setenv("VLM_JAX_HOST_DEVICES", "4")
    assert use_whole_cpu(256) == 4
    assert "--xla_cpu_foo=1" in __import__("os").environ["XLA_FLAGS"]
    assert "device_count=4" in __import__("os").environ["XLA_FLAGS"]


@NEEDS_KERNEL
def test_train_runs_the_onednn_kernel_from_the_shipped_config(tmp_path, data_dir, monkeypatch):
    """`experiments/emoji_two_tower.py:dtype=bfloat16` through train() on one CPU device (what the main command
    starts for a bf16 config): the program train() compiled calls the oneDNN kernel, and the peak its MFU uses
    is the kernel's probe, not XLA's bf16 dot."""
    config = finalize_config(load_config("experiments/emoji_two_tower.py:size=test,dtype=bfloat16,steps=2"))
    config = apply_overrides(config, ["mesh=[('data', 1)]", "evals.sets=[]", "checkpoint.every_steps=0",
                                      "progress=False", "batch_size=16"])
    monkeypatch.setattr(onednn, "measure_flops", lambda: 123e9)  # the kernel's probe, recognisable
    out = train(config, tmp_path)
    assert onednn.TARGET in out["setup"].train_step.lowered().as_text()
    assert out["peak_flops"] == 123e9


def test_gpu_benchmark_runs_its_real_step_on_cpu(tmp_path):
    """benchmarks/gpu_clip.py --tiny on CPU: the trainer's step with bf16 and the dot_product_attention kernel;
    its MFU is the analytic FLOPs over the median step time and the given peak."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_clip", "benchmarks/gpu_clip.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    config = apply_overrides(bench.clip_config(8, tiny=True, attention="xla"), ["mesh=[('data', 1)]"])
    assert config.model.image.attention_impl == "xla" and config.model.text.dtype_mm == "bfloat16"
    result = bench.measure(config, steps=2, peak=1e12)
    assert result["mfu"] == pytest.approx(result["flops_per_step"] / result["step_s"] / 1e12)
    assert result["samples_per_s"] == pytest.approx(8 / result["step_s"])
    assert np.isfinite(result["loss"]) and json.dumps(result)
