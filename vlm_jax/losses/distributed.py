"""Memory-efficient contrastive losses (InfoNCE, sigmoid) behind one API: full, all-gather and ring kernels.

`contrastive_loss(kind, zimg, ztxt, t, b, impl=..., mesh=..., chunk_size=...)` takes global [B, D] embeddings
sharded along the batch over the mesh's batch axes (`sharding.batch_spec`) and returns `(loss, metrics)` equal
to `infonce_loss` / `sigmoid_loss` (values, metrics and gradients w.r.t. zimg, ztxt, t, b).

- impl="full": the reference losses on the whole B×B logit matrix (GSPMD decides the partitioning).
- impl="gather": per device, local b rows against the all-gathered other tower (b×B logits; open_clip's
  local loss + gather-with-grad). Plain autodiff: the transpose of `all_gather` is a `psum_scatter`, so each
  device gets the summed gradient of its own embeddings. InfoNCE computes image rows against all texts (i2t)
  and text rows against all images (t2i); sigmoid computes image rows against all texts once.
- impl="ring": images stay put; text blocks (with their per-column statistics) travel around the device
  ring with `ppermute` (SigLIP §3.1), one b×b block at a time. InfoNCE accumulates row and column
  log-sum-exp online (running max and sum, as in flash attention). A custom VJP saves only the lse vectors
  and recomputes the blocks in a second ring pass, so forward and backward memory are O(b²).
- chunk_size > 0: rows of each device's block are processed `chunk_size` at a time (O(chunk·b) logits per
  ring step, O(chunk·B) for gather). With one device (no mesh, batch axes of size 1, or impl="full") the
  ring kernel runs on one B×B "ring" of a single step, which is the chunked single-device path.

The ring kernels are reverse-mode differentiable only (custom VJP); full and gather use plain autodiff.
Accuracy metrics follow `jnp.argmax` exactly (the first maximum wins ties): each block gives a (max, first
argmax) per row and column, merged across blocks with ties going to the smaller global index. The metrics are
returned under `stop_gradient`, except "loss/i2t" and "loss/t2i" which are differentiable.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P

from vlm_jax import sharding
from vlm_jax.losses.contrastive import LOSSES

Metrics = dict[str, jax.Array]
KINDS = tuple(LOSSES)
IMPLS = ("full", "gather", "ring")


@dataclasses.dataclass(frozen=True)
class _Ctx:
    """Static layout: mesh, batch axes (empty on one device), their size, global batch, row chunk."""

    mesh: Any
    axes: tuple[str, ...]
    n: int
    batch: int
    chunk: int

    @property
    def local(self) -> int:
        """Rows per device."""
        return self.batch // self.n

    @property
    def rows_per_chunk(self) -> int:
        """Rows processed at once (the whole local block without chunking)."""
        return self.chunk if 0 < self.chunk < self.local else self.local


# ----------------------------------------------------------------------------------------------- collectives


def _index(ctx: _Ctx) -> jax.Array | int:
    """This device's position along the (flattened) batch axes."""
    return lax.axis_index(ctx.axes) if ctx.axes else 0


def _psum(x: Any, ctx: _Ctx) -> Any:
    """Sum over the batch axes (identity on one device)."""
    return lax.psum(x, ctx.axes) if ctx.axes else x


def _shift(tree: Any, ctx: _Ctx) -> Any:
    """Sends every device's values to the next device on the ring."""
    if not ctx.axes or not jax.tree.leaves(tree):
        return tree
    perm = [(k, (k + 1) % ctx.n) for k in range(ctx.n)]
    return lax.ppermute(tree, ctx.axes, perm)


def _vary(tree: Any, ctx: _Ctx) -> Any:
    """Marks freshly created constants as varying over the batch axes (loop carries must match updates)."""
    return jax.tree.map(lambda a: lax.pcast(a, ctx.axes, to="varying"), tree) if ctx.axes else tree


def _sharded(fn: Callable, ctx: _Ctx, in_specs: tuple, out_specs: Any) -> Callable:
    """`fn` as a per-device function over the batch axes, or `fn` itself on one device."""
    if not ctx.axes:
        return fn
    return jax.shard_map(fn, mesh=ctx.mesh, in_specs=in_specs, out_specs=out_specs)


# ------------------------------------------------------------------------------------------ block statistics

_NO_INDEX = jnp.iinfo(jnp.int32).max


def _fold(m: jax.Array, idx: jax.Array, s: jax.Array | None, logits: jax.Array, offset: jax.Array | int,
          axis: int) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """Folds a block into the running max, first argmax (global index) and, unless None, sum of exp.

    Ties go to the smaller global index, so blocks may arrive in any order and the argmax is jnp.argmax's.
    The sum is scaled to the running max (online log-sum-exp, as in flash attention).
    """
    bm = jnp.max(logits, axis=axis)
    bi = jnp.argmax(logits, axis=axis).astype(jnp.int32) + offset
    new = jnp.maximum(m, bm)
    idx = jnp.where((bm > m) | ((bm == m) & (bi < idx)), bi, idx)
    if s is not None:
        s = s * jnp.exp(m - new) + jnp.sum(jnp.exp(logits - jnp.expand_dims(new, axis)), axis=axis)
    return new, idx, s


def _empty(n: int, with_sum: bool) -> tuple:
    """Running (max, argmax[, sum]) before any block."""
    state = (jnp.full((n,), -jnp.inf), jnp.full((n,), _NO_INDEX, jnp.int32))
    return state + (jnp.zeros((n,)),) if with_sum else state


def _hits(idx: jax.Array, first: jax.Array | int) -> jax.Array:
    """Number of rows (global ids first, first+1, ...) whose argmax is their own index, as float32."""
    return jnp.sum(idx == first + jnp.arange(idx.shape[0])).astype(jnp.float32)


def _diag(x: jax.Array, y: jax.Array, t: jax.Array) -> jax.Array:
    """Sum of the local positive-pair similarities scaled by t."""
    return t * jnp.sum(x * y)


def _pairs(ctx: _Ctx) -> float:
    """Number of negative pairs B(B−1) (at least 1), as a float: B² overflows int32 from B = 46341."""
    return float(max(ctx.batch * (ctx.batch - 1), 1))


def _logit_total(x: jax.Array, y: jax.Array, t: jax.Array, bias: jax.Array, ctx: _Ctx) -> jax.Array:
    """Σ_ij (t·x_i·y_j + b) over the global batch, from the embedding sums (no B×B reduction)."""
    sx, sy = _psum((jnp.sum(x, axis=0), jnp.sum(y, axis=0)), ctx)
    return t * jnp.dot(sx, sy) + float(ctx.batch) ** 2 * bias


# ------------------------------------------------------------------------------------------------ ring sweep


def _slice_rows(tree: Any, start: jax.Array | int, size: int) -> Any:
    """Rows [start, start+size) of every leaf."""
    return jax.tree.map(lambda a: lax.dynamic_slice_in_dim(a, start, size), tree)


def _put_rows(tree: Any, part: Any, start: jax.Array | int) -> Any:
    """Writes `part` back at row `start` of every leaf."""
    return jax.tree.map(lambda a, u: lax.dynamic_update_slice_in_dim(a, u, start, 0), tree, part)


def _block_pass(block: Callable, rin: Any, row: Any, tin: Any, tacc: Any, acc: Any,
                p: jax.Array | int, q: jax.Array | int, ctx: _Ctx) -> tuple[Any, Any, Any]:
    """Runs `block` on each local row chunk against the text block that came from device q."""
    b, c = ctx.local, ctx.rows_per_chunk
    cols = q * b + jnp.arange(b)

    def one(i: jax.Array | int, carry: tuple) -> tuple:
        row, tacc, acc = carry
        start = i * c
        rows = p * b + start + jnp.arange(c)
        row_c, tacc, acc = block(_slice_rows(rin, start, c), _slice_rows(row, start, c), tin, tacc, acc,
                                 rows, cols)
        return _put_rows(row, row_c, start), tacc, acc

    if c == b:
        return one(0, (row, tacc, acc))
    return lax.fori_loop(0, b // c, one, (row, tacc, acc))


def _sweep(block: Callable, rin: Any, row: Any, tin: Any, tacc: Any, acc: Any, ctx: _Ctx) -> tuple[Any, Any, Any]:
    """Meets every local row with every text block on the ring; travelling state ends back home.

    rin/row: row-aligned read-only / updated state (sliced per chunk); tin/tacc: read-only / updated state
    that travels with the text block; acc: per-device accumulators. All n steps run in one loop (the last
    shift of `tin` only brings it home) so that only one step's blocks are ever live.
    """
    p = _index(ctx)

    def step(s: jax.Array | int, carry: tuple) -> tuple:
        row, tin, tacc, acc = carry
        nxt = _shift(tin, ctx)  # issued before the compute so the transfer can overlap it
        row, tacc, acc = _block_pass(block, rin, row, tin, tacc, acc, p, (p - s) % ctx.n, ctx)
        return row, nxt, _shift(tacc, ctx), acc

    carry = (row, tin, tacc, acc)
    row, _, tacc, acc = step(0, carry) if ctx.n == 1 else lax.fori_loop(0, ctx.n, step, carry)
    return row, tacc, acc


# ----------------------------------------------------------------------------------------------- ring InfoNCE


def _ring_infonce_fwd_local(x: jax.Array, y: jax.Array, t: jax.Array, ctx: _Ctx) -> tuple:
    """Per device: online row/column lse and argmax over the ring; (loss pieces, accuracies), lse vectors."""

    def block(xc, row, yq, col, acc, rows, cols):
        logits = t * (xc @ yq.T)
        return _fold(*row, logits, cols[0], axis=1), _fold(*col, logits, rows[0], axis=0), acc

    empty = _vary(_empty(ctx.local, with_sum=True), ctx)
    (m, idx, s), (mc, idx_c, sc), _ = _sweep(block, x, empty, y, empty, (), ctx)
    lse_r, lse_c = m + jnp.log(s), mc + jnp.log(sc)
    first = _index(ctx) * ctx.local
    sums = jnp.stack([jnp.sum(lse_r), jnp.sum(lse_c), _diag(x, y, t), _hits(idx, first), _hits(idx_c, first)])
    sum_r, sum_c, diag, hits_r, hits_c = _psum(sums, ctx) / ctx.batch
    return (sum_r - diag, sum_c - diag, hits_r, hits_c), (lse_r, lse_c)


def _ring_infonce_bwd_local(x: jax.Array, y: jax.Array, t: jax.Array, lse_r: jax.Array, lse_c: jax.Array,
                            g_r: jax.Array, g_c: jax.Array, ctx: _Ctx) -> tuple:
    """Per device: recomputes each block; dL/dlogits = g_r/B (softmax_row − I) + g_c/B (softmax_col − I)."""
    scale_r, scale_c = g_r / ctx.batch, g_c / ctx.batch

    def block(rin, dx, tin, dy, dt, rows, cols):
        (xc, lr), (yq, lc) = rin, tin
        sim = xc @ yq.T
        logits = t * sim
        eye = (rows[:, None] == cols[None, :]).astype(sim.dtype)
        g = scale_r * (jnp.exp(logits - lr[:, None]) - eye) + scale_c * (jnp.exp(logits - lc[None, :]) - eye)
        return dx + t * (g @ yq), dy + t * (g.T @ xc), dt + jnp.sum(g * sim)

    zeros = _vary((jnp.zeros(x.shape), jnp.zeros(y.shape), jnp.zeros(())), ctx)
    dx, dy, dt = _sweep(block, (x, lse_r), zeros[0], (y, lse_c), zeros[1], zeros[2], ctx)
    return dx, dy, _psum(dt, ctx)


def _ring_infonce_fwd(x: jax.Array, y: jax.Array, t: jax.Array, ctx: _Ctx) -> tuple:
    """Forward pass over the mesh; saves the inputs and the row/column lse vectors."""
    spec = P(ctx.axes)
    fwd = _sharded(lambda a, b, s: _ring_infonce_fwd_local(a, b, s, ctx), ctx, (spec, spec, P()),
                   ((P(), P(), P(), P()), (spec, spec)))
    out, (lse_r, lse_c) = fwd(x, y, t)
    return out, (x, y, t, lse_r, lse_c)


def _ring_infonce_bwd(ctx: _Ctx, res: tuple, ct: tuple) -> tuple:
    """Backward pass over the mesh (a second ring sweep); accuracy cotangents are ignored."""
    spec = P(ctx.axes)
    bwd = _sharded(lambda *a: _ring_infonce_bwd_local(*a, ctx), ctx,
                   (spec, spec, P(), spec, spec, P(), P()), (spec, spec, P()))
    return bwd(*res, ct[0], ct[1])


_ring_infonce_vjp = jax.custom_vjp(lambda x, y, t, ctx: _ring_infonce_fwd(x, y, t, ctx)[0], nondiff_argnums=(3,))
_ring_infonce_vjp.defvjp(_ring_infonce_fwd, _ring_infonce_bwd)


# ----------------------------------------------------------------------------------------------- ring sigmoid


def _signs(rows: jax.Array, cols: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(diagonal mask, ±1 labels) of a block."""
    eye = rows[:, None] == cols[None, :]
    return eye, jnp.where(eye, 1.0, -1.0)


def _ring_sigmoid_fwd_local(x: jax.Array, y: jax.Array, t: jax.Array, bias: jax.Array, ctx: _Ctx) -> tuple:
    """Per device: loss and logit sums and running argmax over the ring; (loss, pos, neg, acc/i2t, acc/t2i)."""

    def block(xc, row, yq, col, acc, rows, cols):
        logits = t * (xc @ yq.T) + bias
        _, z = _signs(rows, cols)
        loss = acc - jnp.sum(jax.nn.log_sigmoid(z * logits))
        return _fold(*row, None, logits, cols[0], axis=1)[:2], _fold(*col, None, logits, rows[0], axis=0)[:2], loss

    empty = _vary((_empty(ctx.local, with_sum=False), jnp.zeros(())), ctx)
    (_, idx), (_, idx_c), loss = _sweep(block, x, empty[0], y, empty[0], empty[1], ctx)
    first = _index(ctx) * ctx.local
    diag = _diag(x, y, t) + x.shape[0] * bias
    loss, diag, hits_r, hits_c = _psum(jnp.stack([loss, diag, _hits(idx, first), _hits(idx_c, first)]), ctx)
    neg = (_logit_total(x, y, t, bias, ctx) - diag) / _pairs(ctx)
    return loss / ctx.batch, diag / ctx.batch, neg, hits_r / ctx.batch, hits_c / ctx.batch


def _ring_sigmoid_bwd_local(x: jax.Array, y: jax.Array, t: jax.Array, bias: jax.Array, g: jax.Array,
                            ctx: _Ctx) -> tuple:
    """Per device: recomputes each block; dL/dlogits = −z σ(−z·logits) · g / B."""
    scale = g / ctx.batch

    def block(xc, dx, yq, dy, acc, rows, cols):
        sim = xc @ yq.T
        _, z = _signs(rows, cols)
        gl = -scale * z * jax.nn.sigmoid(-z * (t * sim + bias))
        sums = jnp.stack([jnp.sum(gl * sim), jnp.sum(gl)])
        return dx + t * (gl @ yq), dy + t * (gl.T @ xc), acc + sums

    zeros = _vary((jnp.zeros(x.shape), jnp.zeros(y.shape), jnp.zeros((2,))), ctx)
    dx, dy, sums = _sweep(block, x, zeros[0], y, zeros[1], zeros[2], ctx)
    dt, db = _psum(sums, ctx)
    return dx, dy, dt, db


def _ring_sigmoid_fwd(x: jax.Array, y: jax.Array, t: jax.Array, bias: jax.Array, ctx: _Ctx) -> tuple:
    """Forward pass over the mesh; saves only the inputs."""
    spec = P(ctx.axes)
    fwd = _sharded(lambda *a: _ring_sigmoid_fwd_local(*a, ctx), ctx, (spec, spec, P(), P()), (P(),) * 5)
    return fwd(x, y, t, bias), (x, y, t, bias)


def _ring_sigmoid_bwd(ctx: _Ctx, res: tuple, ct: tuple) -> tuple:
    """Backward pass over the mesh; metric cotangents are ignored."""
    spec = P(ctx.axes)
    bwd = _sharded(lambda *a: _ring_sigmoid_bwd_local(*a, ctx), ctx, (spec, spec, P(), P(), P()),
                   (spec, spec, P(), P()))
    return bwd(*res, ct[0])


_ring_sigmoid_vjp = jax.custom_vjp(lambda x, y, t, b, ctx: _ring_sigmoid_fwd(x, y, t, b, ctx)[0],
                                   nondiff_argnums=(4,))
_ring_sigmoid_vjp.defvjp(_ring_sigmoid_fwd, _ring_sigmoid_bwd)


# ------------------------------------------------------------------------------------------------ all-gather


def _map_rows(fn: Callable, x: jax.Array, ctx: _Ctx) -> Any:
    """fn(x_chunk, start) over row chunks (rematerialised in the backward pass), outputs stacked [k, ...]."""
    c = ctx.rows_per_chunk
    k = x.shape[0] // c
    if k == 1:
        return jax.tree.map(lambda a: a[None], fn(x, 0))
    body = jax.checkpoint(lambda args: fn(*args))
    return lax.map(body, (x.reshape(k, c, *x.shape[1:]), jnp.arange(k) * c))


def _flat(a: jax.Array) -> jax.Array:
    """[k, c, ...] → [k·c, ...]."""
    return a.reshape(-1, *a.shape[2:])


def _row_lse(t: jax.Array, x: jax.Array, others: jax.Array, ctx: _Ctx) -> tuple[jax.Array, jax.Array]:
    """Row log-sum-exp and argmax of t·x·othersᵀ, chunked over rows."""

    def fn(xc, start):
        logits = t * (xc @ others.T)
        return jax.nn.logsumexp(logits, axis=1), jnp.argmax(lax.stop_gradient(logits), axis=1)

    lse, idx = _map_rows(fn, x, ctx)
    return _flat(lse), _flat(idx)


def _gather_infonce_local(x: jax.Array, y: jax.Array, t: jax.Array, ctx: _Ctx) -> tuple:
    """Per device: local image rows vs all texts (i2t) and local text rows vs all images (t2i)."""
    first = _index(ctx) * ctx.local
    lse_i, idx_i = _row_lse(t, x, lax.all_gather(y, ctx.axes, tiled=True), ctx)
    lse_t, idx_t = _row_lse(t, y, lax.all_gather(x, ctx.axes, tiled=True), ctx)
    diag = _diag(x, y, t)
    sums = jnp.stack([jnp.sum(lse_i) - diag, jnp.sum(lse_t) - diag, _hits(idx_i, first), _hits(idx_t, first)])
    i2t, t2i, acc_i, acc_t = lax.psum(sums, ctx.axes) / ctx.batch
    return i2t, t2i, acc_i, acc_t


def _gather_sigmoid_local(x: jax.Array, y: jax.Array, t: jax.Array, bias: jax.Array, ctx: _Ctx) -> tuple:
    """Per device: local image rows vs all texts; column argmax combined across devices (pmax, pmin)."""
    first = _index(ctx) * ctx.local
    ya = lax.all_gather(y, ctx.axes, tiled=True)
    cols = jnp.arange(ctx.batch)

    def fn(xc, start):
        logits = t * (xc @ ya.T) + bias
        _, z = _signs(first + start + jnp.arange(xc.shape[0]), cols)
        sg = lax.stop_gradient(logits)
        col_idx = jnp.argmax(sg, axis=0).astype(jnp.int32) + first + start
        return -jnp.sum(jax.nn.log_sigmoid(z * logits)), jnp.argmax(sg, axis=1), jnp.max(sg, axis=0), col_idx

    loss, idx, col_max, col_idx = _map_rows(fn, x, ctx)
    diag = _diag(x, y, t) + x.shape[0] * bias
    loss, diag, hits = lax.psum(jnp.stack([jnp.sum(loss), diag, _hits(_flat(idx), first)]), ctx.axes)
    best = lax.pmax(jnp.max(col_max, axis=0), ctx.axes)
    col_idx = lax.pmin(jnp.min(jnp.where(col_max == best, col_idx, _NO_INDEX), axis=0), ctx.axes)
    neg = (_logit_total(x, y, t, bias, ctx) - diag) / _pairs(ctx)
    return loss / ctx.batch, diag / ctx.batch, neg, hits / ctx.batch, _hits(col_idx, 0) / ctx.batch


def _gather_infonce(x: jax.Array, y: jax.Array, t: jax.Array, ctx: _Ctx) -> tuple:
    """All-gather InfoNCE over the mesh (plain autodiff)."""
    spec = P(ctx.axes)
    return jax.shard_map(lambda *a: _gather_infonce_local(*a, ctx), mesh=ctx.mesh,
                         in_specs=(spec, spec, P()), out_specs=(P(),) * 4)(x, y, t)


def _gather_sigmoid(x: jax.Array, y: jax.Array, t: jax.Array, bias: jax.Array, ctx: _Ctx) -> tuple:
    """All-gather sigmoid loss over the mesh (plain autodiff)."""
    spec = P(ctx.axes)
    return jax.shard_map(lambda *a: _gather_sigmoid_local(*a, ctx), mesh=ctx.mesh,
                         in_specs=(spec, spec, P(), P()), out_specs=(P(),) * 5)(x, y, t, bias)


# ------------------------------------------------------------------------------------------------------- API


def _resolve_mesh(mesh: Any) -> Any:
    """The given mesh, else the context mesh (concrete if set, else abstract), else None."""
    if mesh is not None:
        return mesh
    for get in (jax.sharding.get_mesh, jax.sharding.get_abstract_mesh):
        try:
            m = get()
        except Exception:  # noqa: BLE001 - no concrete mesh inside some tracing contexts
            continue
        if m is not None and not m.empty:
            return m
    return None


def batch_axes(mesh: Any) -> tuple[str, ...]:
    """Mesh axes of size > 1 that shard the batch dimension (empty without a mesh)."""
    if mesh is None or mesh.empty:
        return ()
    spec = sharding.batch_spec(mesh)
    entry = spec[0] if len(spec) else None
    return () if entry is None else ((entry,) if isinstance(entry, str) else tuple(entry))


def _context(mesh: Any, batch: int, chunk_size: int, distributed: bool) -> _Ctx:
    """Layout for a call; one device unless `distributed` and the mesh's batch axes span devices."""
    mesh = _resolve_mesh(mesh) if distributed else None
    axes = batch_axes(mesh)
    n = sharding.axes_size(mesh, axes) if axes else 1
    if batch % n:
        raise ValueError(f"Global batch {batch} is not divisible by the {n} devices of batch axes {axes}")
    ctx = _Ctx(mesh=mesh if axes else None, axes=axes, n=n, batch=batch, chunk=chunk_size)
    if 0 < chunk_size < ctx.local and ctx.local % chunk_size:
        raise ValueError(f"chunk_size {chunk_size} must divide the per-device batch {ctx.local}")
    return ctx


def _check_args(kind: str, impl: str, b: Any, chunk_size: int) -> None:
    """Raises ValueError on unknown kind/impl, a missing sigmoid bias or a negative chunk."""
    if kind not in KINDS:
        raise ValueError(f"Unknown contrastive loss kind '{kind}'; valid: {list(KINDS)}")
    if impl not in IMPLS:
        raise ValueError(f"Unknown contrastive loss impl '{impl}'; valid: {list(IMPLS)}")
    if kind == "sigmoid" and b is None:
        raise ValueError("The sigmoid loss needs a bias b")
    if chunk_size < 0:
        raise ValueError(f"chunk_size must be >= 0 (0: no chunking), got {chunk_size}")


def _metrics(kind: str, out: tuple) -> tuple[jax.Array, Metrics]:
    """(loss, metrics) from a kernel's outputs; accuracies and logit means under stop_gradient."""
    sg = lax.stop_gradient
    if kind == "infonce":
        i2t, t2i, acc_i, acc_t = out
        return 0.5 * (i2t + t2i), {"loss/i2t": i2t, "loss/t2i": t2i, "acc/i2t": sg(acc_i), "acc/t2i": sg(acc_t)}
    loss, pos, neg, acc_i, acc_t = out
    return loss, {"logit/pos": sg(pos), "logit/neg": sg(neg), "acc/i2t": sg(acc_i), "acc/t2i": sg(acc_t)}


def contrastive_loss(kind: str, zimg: jax.Array, ztxt: jax.Array, t: jax.Array, b: jax.Array | None = None, *,
                     impl: str = "full", mesh: Any = None, chunk_size: int = 0) -> tuple[jax.Array, Metrics]:
    """InfoNCE or sigmoid loss of [B, D] embeddings by the full, all-gather or ring kernel (see module doc).

    mesh=None uses the context mesh (`jax.set_mesh`); without one, or with batch axes of size 1, gather and
    ring run on one device (chunked when chunk_size > 0). `b` is the sigmoid bias (ignored by InfoNCE).
    """
    _check_args(kind, impl, b, chunk_size)
    x, y = zimg.astype(jnp.float32), ztxt.astype(jnp.float32)
    t = jnp.asarray(t, jnp.float32)
    bias = None if b is None else jnp.asarray(b, jnp.float32)
    ctx = _context(mesh, x.shape[0], chunk_size, distributed=impl != "full")
    if not ctx.axes and not chunk_size:
        return LOSSES[kind](x, y, t, *(() if kind == "infonce" else (bias,)))
    if impl == "gather" and ctx.axes:
        out = _gather_infonce(x, y, t, ctx) if kind == "infonce" else _gather_sigmoid(x, y, t, bias, ctx)
    else:
        out = _ring_infonce_vjp(x, y, t, ctx) if kind == "infonce" else _ring_sigmoid_vjp(x, y, t, bias, ctx)
    return _metrics(kind, out)
