"""Native bfloat16 matmuls on CPU: an XLA FFI custom call into oneDNN (AVX512-BF16 / AMX kernels).

XLA:CPU runs a bf16 `dot` by converting to float32 (no faster than float32); oneDNN's bf16 matmul runs at about
twice the float32 rate on CPUs with AVX512-BF16 (benchmarks/RESULTS.md). `dot_general` below stands in for
`lax.dot_general` in the dense layers: bf16 operands with one contracting dimension and no batch dimensions go
through oneDNN (float32 accumulation and output, cast back to bf16); their gradient is two more such matmuls with
transposed operands (no copies). Anything else goes through XLA, bf16 contractions with a float32 result through
`mixed_dot`, whose backward takes bf16 cotangents. The shared library is compiled on first use from
`onednn_matmul.cc` against the pinned oneDNN wheel and cached next to it.
"""
from __future__ import annotations

import contextlib
import contextvars
import ctypes
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import numpy as np

log = logging.getLogger(__name__)
SOURCE = Path(__file__).with_name("onednn_matmul.cc")
TARGET = "vlm_jax_onednn_matmul_bf16"
_ENABLED = contextvars.ContextVar("vlm_jax_onednn", default=False)


def _prefix_paths() -> tuple[Path, Path]:
    """(include dir, lib dir) of the oneDNN wheel (installed under the environment's prefix)."""
    return Path(sys.prefix) / "include", Path(sys.prefix) / "lib"


def build(out_dir: Path | None = None) -> Path:
    """Compiles the FFI handler (g++, C++17) unless a build of this source exists; returns the .so path."""
    include, lib = _prefix_paths()
    if not (include / "oneapi" / "dnnl" / "dnnl.hpp").exists() or not list(lib.glob("libdnnl.so*")):
        raise RuntimeError(f"oneDNN headers/library not found under {sys.prefix} (pip install onednn-devel-cpu-gomp)")
    compiler = shutil.which(os.environ.get("CXX", "g++"))
    if compiler is None:
        raise RuntimeError("no C++ compiler (g++) to build the oneDNN kernel")
    digest = hashlib.sha256(SOURCE.read_bytes() + jax.__version__.encode()).hexdigest()[:16]
    out_dir = out_dir or SOURCE.parent / "_build"
    path = out_dir / f"onednn_matmul_{digest}.so"
    if path.exists():
        return path
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    cmd = [compiler, "-O2", "-std=c++17", "-shared", "-fPIC", "-w", str(SOURCE), "-o", str(tmp),
           f"-I{jax.ffi.include_dir()}", f"-I{include}", f"-L{lib}", "-ldnnl", f"-Wl,-rpath,{lib}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"building the oneDNN kernel failed:\n{proc.stderr[-2000:]}")
    tmp.replace(path)  # atomic: concurrent builders (several processes) never load a half-written file
    return path


@functools.lru_cache(maxsize=None)
def _library() -> ctypes.CDLL | None:
    """The built kernel library, or None (logged) where it cannot be built or oneDNN has no bf16 matmul here."""
    if os.environ.get("VLM_JAX_ONEDNN", "1") == "0":
        return None
    try:
        library = ctypes.cdll.LoadLibrary(str(build()))
        if not library.OnednnBf16Supported():
            raise RuntimeError("oneDNN has no bf16 matmul for this CPU (it needs AVX512-BF16, AMX or AVX2-VNNI-2)")
        return library
    except (RuntimeError, OSError) as err:
        log.warning("oneDNN bf16 matmul unavailable, bf16 matmuls use XLA's (float32-speed) path: %s", err)
        return None


def supported() -> bool:
    """Whether the kernel builds and this CPU runs it (starts no JAX backend: safe before XLA_FLAGS are set)."""
    return _library() is not None


@functools.lru_cache(maxsize=None)
def available() -> bool:
    """Builds (once), checks and registers the kernel; False (logged) where that is impossible."""
    library = _library()
    if library is None:
        return False
    jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(library.OnednnMatmulBf16), platform="cpu")
    return True


@contextlib.contextmanager
def scope(enabled: bool) -> Iterator[None]:
    """Within this context (tracing), bf16 dense matmuls go through oneDNN when `enabled` and available (the
    kernel is built on the first such matmul)."""
    token = _ENABLED.set(bool(enabled))
    try:
        yield
    finally:
        _ENABLED.reset(token)


def enabled() -> bool:
    """Whether the current trace routes bf16 matmuls through oneDNN."""
    return _ENABLED.get()


def _call(a: jax.Array, b: jax.Array, trans_a: bool = False, trans_b: bool = False, bias: jax.Array | None = None,
          out: Any = jnp.float32) -> jax.Array:
    """op(a) · op(b) (+ bias) of 2-D bf16 operands: float32 accumulation, result in `out` (float32 or bfloat16)."""
    if not available():
        raise RuntimeError("the oneDNN kernel is unavailable (see the warning logged above)")
    m = a.shape[1] if trans_a else a.shape[0]
    n = b.shape[0] if trans_b else b.shape[1]
    bias = jnp.zeros((0,), jnp.float32) if bias is None else bias.astype(jnp.float32)
    return jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct((m, n), out))(
        a.astype(jnp.bfloat16), b.astype(jnp.bfloat16), bias, trans_a=trans_a, trans_b=trans_b)


def _grad_dtype(x: jax.Array) -> Any:
    """The kernel's output dtype for a gradient of `x`: bf16 activations get bf16 gradients (written once)."""
    return jnp.bfloat16 if x.dtype == jnp.bfloat16 else jnp.float32


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def matmul(a: jax.Array, b: jax.Array, out: Any = jnp.float32) -> jax.Array:
    """a [M, K] · b [K, N] → [M, N] in `out` (float32 or bfloat16), bf16 inputs, float32 accumulation, oneDNN."""
    return _call(a, b, out=out)


def _fwd(a: jax.Array, b: jax.Array, out: Any) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    return _call(a, b, out=out), (a, b)


def _bwd(out: Any, res: tuple[jax.Array, jax.Array], g: jax.Array) -> tuple[jax.Array, jax.Array]:
    a, b = res
    g = g.astype(jnp.bfloat16)
    da = _call(g, b, trans_b=True, out=_grad_dtype(a))  # g [M, N] · bᵀ
    db = _call(a, g, trans_a=True, out=_grad_dtype(b))  # aᵀ · g [M, N]
    return da.astype(a.dtype), db.astype(b.dtype)


matmul.defvjp(_fwd, _bwd)


@jax.custom_vjp
def linear(x: jax.Array, w: jax.Array, bias: jax.Array) -> jax.Array:
    """bf16 x [M, K] · w [K, N] + float32 bias [N] → bf16 [M, N]: the bias is added in the kernel (float32), so
    the output is written once, in bf16. Gradients: dx bf16, dw and dbias float32 (like the parameters)."""
    return _call(x, w, bias=bias, out=jnp.bfloat16)


def _linear_fwd(x: jax.Array, w: jax.Array, bias: jax.Array) -> tuple[jax.Array, tuple]:
    return _call(x, w, bias=bias, out=jnp.bfloat16), (x, w, bias)


def _linear_bwd(res: tuple, g: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    x, w, bias = res
    g = g.astype(jnp.bfloat16)
    dx = _call(g, w, trans_b=True, out=_grad_dtype(x))
    dw = _call(x, g, trans_a=True, out=jnp.float32)
    return dx.astype(x.dtype), dw.astype(w.dtype), jnp.sum(g, axis=0, dtype=jnp.float32).astype(bias.dtype)


linear.defvjp(_linear_fwd, _linear_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def mixed_dot(lhs: jax.Array, rhs: jax.Array, dimension_numbers: tuple, precision: Any = None) -> jax.Array:
    """XLA's bf16 · bf16 → float32 `dot_general` whose backward takes bf16 cotangents: plain autodiff would feed
    the float32 cotangent of the float32 output into the two transposed dots, making them float32 × bf16
    (float32 matmuls on GPU and TPU). Gradients come back in bf16 (float32 accumulation inside the dot)."""
    return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision, preferred_element_type=jnp.float32)


def _mixed_fwd(lhs: jax.Array, rhs: jax.Array, dimension_numbers: tuple, precision: Any) -> tuple:
    return mixed_dot(lhs, rhs, dimension_numbers, precision), (lhs, rhs)


def _mixed_bwd(dimension_numbers: tuple, precision: Any, res: tuple, g: jax.Array) -> tuple[jax.Array, jax.Array]:
    lhs, rhs = res
    g = g.astype(jnp.bfloat16)
    dot = functools.partial(jax.lax.dot_general, dimension_numbers=dimension_numbers, precision=precision)
    (da,) = jax.linear_transpose(lambda a: dot(a, rhs), lhs)(g)  # transposes only: no primal recomputed
    (db,) = jax.linear_transpose(lambda b: dot(lhs, b), rhs)(g)
    return da, db


mixed_dot.defvjp(_mixed_fwd, _mixed_bwd)


def can_route(x: jax.Array, w: jax.Array) -> bool:
    """Whether a bf16 matmul of these operands goes through oneDNN in the current trace."""
    return x.dtype == jnp.bfloat16 and w.dtype == jnp.bfloat16 and enabled() and available()


def dot_general(lhs: jax.Array, rhs: jax.Array, dimension_numbers: Any, precision: Any = None,
                preferred_element_type: Any = None, **kwargs: Any) -> jax.Array:
    """`lax.dot_general` with bf16 "…k,k…" contractions routed through oneDNN inside an enabled scope."""
    (lc, rc), (lb, rb) = dimension_numbers
    n = len(lc)
    simple = (not lb and not rb and n and tuple(lc) == tuple(range(lhs.ndim - n, lhs.ndim))
              and tuple(rc) == tuple(range(n)) and lhs.dtype == jnp.bfloat16 and rhs.dtype == jnp.bfloat16)
    if not (simple and enabled() and available()):
        if (lhs.dtype == rhs.dtype == jnp.bfloat16 and not kwargs and preferred_element_type is not None
                and jnp.dtype(preferred_element_type) == jnp.float32):
            dn = tuple(tuple(tuple(int(d) for d in dims) for dims in pair) for pair in dimension_numbers)
            return mixed_dot(lhs, rhs, dn, precision)
        return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                                   preferred_element_type=preferred_element_type, **kwargs)
    k = int(np.prod(lhs.shape[lhs.ndim - n:]))  # the last n dims of lhs against the first n of rhs
    result = jnp.dtype(preferred_element_type or jnp.bfloat16)
    out = matmul(lhs.reshape(-1, k), rhs.reshape(k, -1), jnp.bfloat16 if result == jnp.bfloat16 else jnp.float32)
    return out.reshape(*lhs.shape[:lhs.ndim - n], *rhs.shape[n:]).astype(result)


def measure_flops(n: int = 2048, reps: int = 5) -> float:
    """FLOP/s of this kernel on an n×n×n bf16 matmul (best of `reps`): the bf16 MFU ceiling on CPU."""
    from vlm_jax.scaling.hardware import measure_matmul_flops

    return measure_matmul_flops("bfloat16", n, reps, matmul=jax.jit(lambda a, b: matmul(a, b)))


def einsum(spec: str, *operands: jax.Array, **kwargs: Any) -> jax.Array:
    """`jnp.einsum` whose two-operand contractions use `dot_general` above."""
    return jnp.einsum(spec, *operands, _dot_general=dot_general, **kwargs)

