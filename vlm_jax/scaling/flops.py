"""Matmul/convolution FLOPs of a traced function, read off its jaxpr (scan bodies × length, remat included).

XLA's cost analysis counts a while-loop body once, so it under-reports models built with `nn.scan`; this
counter walks the jaxpr instead. Elementwise work is not counted: the result is the matmul FLOPs that MFU
is defined by (2 FLOPs per multiply-add).
"""
from __future__ import annotations

import math
from typing import Any, Callable

import jax
from jax.extend import core as jcore


def _dot_flops(eqn: Any) -> float:
    """2 · batch · M · N · K of a dot_general."""
    lhs, rhs = (v.aval.shape for v in eqn.invars[:2])
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    batch = math.prod(lhs[d] for d in lb)
    k = math.prod(lhs[d] for d in lc)
    m = math.prod(d for i, d in enumerate(lhs) if i not in lc and i not in lb)
    n = math.prod(d for i, d in enumerate(rhs) if i not in rc and i not in rb)
    return 2.0 * batch * m * n * k


def _conv_flops(eqn: Any) -> float:
    """2 · output elements · (input features per group × kernel window) of a conv_general_dilated."""
    out = eqn.outvars[0].aval.shape
    rhs = eqn.invars[1].aval.shape
    out_feature_dim = eqn.params["dimension_numbers"].rhs_spec[0]
    return 2.0 * math.prod(out) * math.prod(rhs) / rhs[out_feature_dim]


def _ffi_matmul_flops(eqn: Any) -> float:
    """2 · M · N · K of the oneDNN bf16 matmul custom call (kernels.onednn); other custom calls count 0."""
    from vlm_jax.kernels.onednn import TARGET

    if eqn.params.get("target_name") != TARGET:
        return 0.0
    m, n = eqn.outvars[0].aval.shape
    a = eqn.invars[0].aval.shape
    k = a[0] if dict(eqn.params["attributes"]).get("trans_a") else a[1]
    return 2.0 * m * n * k


def _sub_jaxprs(value: Any) -> list[Any]:
    """Jaxprs held by one equation parameter (a jaxpr, a closed jaxpr, or a tuple of them)."""
    if isinstance(value, (jcore.Jaxpr, jcore.ClosedJaxpr)):
        return [value]
    if isinstance(value, (tuple, list)):
        return [v for v in value if isinstance(v, (jcore.Jaxpr, jcore.ClosedJaxpr))]
    return []


def jaxpr_flops(jaxpr: Any) -> float:
    """FLOPs of a (closed) jaxpr, recursing into sub-jaxprs."""
    jaxpr = jaxpr.jaxpr if isinstance(jaxpr, jcore.ClosedJaxpr) else jaxpr
    total = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            total += _dot_flops(eqn)
        elif name == "conv_general_dilated":
            total += _conv_flops(eqn)
        elif name == "ffi_call":
            total += _ffi_matmul_flops(eqn)
        elif name == "scan":
            total += eqn.params["length"] * jaxpr_flops(eqn.params["jaxpr"])
        elif name == "cond":
            total += max(jaxpr_flops(b) for b in eqn.params["branches"])
        elif name == "while":
            total += jaxpr_flops(eqn.params["body_jaxpr"])  # trip count unknown: counted once
        else:
            for key, value in eqn.params.items():
                if key in ("jvp_jaxpr_fun", "jvp_jaxpr_thunk", "fwd_jaxpr_thunk", "bwd"):
                    continue  # custom-derivative rules: only the primal call is executed here
                for sub in _sub_jaxprs(value):
                    total += jaxpr_flops(sub)
    return total


def fn_flops(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> float:
    """FLOPs of one call `fn(*args, **kwargs)`; args may be abstract (jax.ShapeDtypeStruct)."""
    return jaxpr_flops(jax.make_jaxpr(fn, **kwargs)(*args))
