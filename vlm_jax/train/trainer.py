"""The one train loop: sharded init, jitted step, logging, evals, checkpoints and exact resume."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from vlm_jax import sharding as shd
from vlm_jax.data import augment, robust
from vlm_jax.data import naflex as naflex_data
from vlm_jax.kernels import onednn
from vlm_jax.scaling import compute, hardware
from vlm_jax.config import ConfigError, fill_missing, merge_defaults
from vlm_jax.train import init_from
from vlm_jax.train.checkpoint import Checkpointer
from vlm_jax.train.defaults import OPEN_SECTIONS, trainer_defaults
from vlm_jax.train.objective import Objective, check_naflex, get_objective, objective_class
from vlm_jax.train.optim import make_optimizer, path_mask
from vlm_jax.train.progress import JsonlWriter, Progress
from vlm_jax.train import resume
from vlm_jax.train.resume import trim_jsonl
from vlm_jax.train.state import TrainState
from vlm_jax.train.tensorboard import EventWriter, grid
from vlm_jax.train.workdir import write_version

log = logging.getLogger(__name__)


class NonFiniteError(FloatingPointError):
    """A loss or gradient became NaN/Inf."""


def finalize_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Experiment config merged over trainer defaults; unknown keys raise naming the valid ones."""
    retire_grad_cache(config)
    config = merge_defaults(config, trainer_defaults(), OPEN_SECTIONS)
    config = fill_missing(config, objective_class(config.objective).CONFIG_DEFAULTS)
    if config.nonfinite not in ("stop", "skip"):
        raise ValueError(f"config.nonfinite must be 'stop' or 'skip', got {config.nonfinite!r}")
    return config


def retire_grad_cache(config: ml_collections.ConfigDict) -> None:
    """`loss.grad_cache` became `grad_accum_steps` (every contrastive objective accumulates by GradCache): a saved
    run's 0 or 1 (off) is dropped; a split asks for the new key."""
    loss = config.get("loss")
    if loss is None or "grad_cache" not in loss:
        return
    n = int(loss.grad_cache or 0)
    if n > 1:
        raise ConfigError(f"loss.grad_cache={n} is now grad_accum_steps={n}: contrastive objectives accumulate by "
                          "GradCache (every negative kept, all loss terms run in the recompute pass)")
    with loss.unlocked():
        del loss["grad_cache"]


class Setup:
    """Mesh, model, optimizer, shardings and jitted functions for one config (no state yet).

    `init_state` and `train_step` are `MeshJit`s: they trace under this mesh and its logical axis rules whoever
    calls them, so training, evaluation, the dry run and the benchmarks compile one and the same program.
    """

    def __init__(self, config: ml_collections.ConfigDict, devices: list[jax.Device] | None = None):
        self.config = config
        self.objective: Objective = get_objective(config)
        check_naflex(self.objective, config)
        self.mesh = shd.make_mesh(config.mesh, devices, config.dcn_mesh, split_fsdp=config.fsdp_dims == "2d")
        self.rules = list(config.sharding_rules or shd.DEFAULT_RULES)
        self.mesh_rules = shd.rules_for_mesh(self.mesh, self.rules)
        self.objective.trace_context = self.trace_context
        self.model = self.objective.model()
        self.batch_sharding = shd.batch_sharding(self.mesh, self.rules)
        if config.batch_size % (jax.process_count() * config.grad_accum_steps):
            raise ValueError(f"batch_size {config.batch_size} must divide by processes × grad_accum_steps")
        self._build()

    @contextlib.contextmanager
    def context(self):
        """Concrete mesh + logical axis rules, for eager code outside jit (the jitted functions need none)."""
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.mesh_rules):
            yield

    def trace_context(self):
        """Abstract mesh + logical axis rules; may be entered inside a traced function."""
        return shd.trace_context(self.mesh, self.rules)

    def jit(self, fn: Callable, **jit_kwargs: Any) -> shd.MeshJit:
        """`fn` jitted to trace under this setup's mesh and rules."""
        return shd.MeshJit(fn, self.mesh, self.rules, **jit_kwargs)

    def _init_variables(self, rng: jax.Array) -> Any:
        """Boxed (logically annotated) parameters."""
        dummy = jax.tree.map(lambda v: jnp.zeros(v.shape, v.dtype), self.objective.init_batch(2))
        return self.model.init({"params": rng, "dropout": rng}, **dummy, train=False)["params"]

    def _build(self) -> None:
        config = self.config
        rng = jax.eval_shape(lambda: jax.random.key(config.seed))
        with self.trace_context():  # tracing only: the mesh may be an AOT-only mesh of devices this host lacks
            boxed = jax.eval_shape(self._init_variables, rng)
        fsdp = dict(min_size=config.fsdp_min_size, fsdp=config.fsdp_dims)
        self.param_shardings = shd.tree_shardings(boxed, self.mesh, self.rules, **fsdp)
        abstract_params = shd.unbox_abstract(boxed)
        self.tx, self.schedule = make_optimizer(config.optim, config.total_steps, abstract_params)
        # optim.freeze: those parameters get no update and, behind stop_gradient in the loss, no gradient either
        self.objective.frozen = path_mask(abstract_params, config.optim.freeze) if config.optim.freeze else None
        abstract_opt = jax.eval_shape(self.tx.init, abstract_params)
        replicated = shd.replicated(self.mesh)
        # frozen groups (optim.freeze) hold MaskedNode placeholders where a parameter has no optimizer state
        masked = lambda x: isinstance(x, optax.MaskedNode)  # noqa: E731
        opt_shardings = optax.tree_utils.tree_map_params(
            self.tx, lambda v, s: v if masked(v) else s, abstract_opt, self.param_shardings,
            transform_non_params=lambda _: replicated, is_leaf=masked)
        with self.trace_context():
            boxed_extra = jax.eval_shape(self.objective.init_extra, abstract_params)
        extra_shardings = shd.tree_shardings(boxed_extra, self.mesh, self.rules, **fsdp)
        self.state_shardings = TrainState(step=replicated, params=self.param_shardings,
                                          opt_state=opt_shardings, extra=extra_shardings, rng=replicated)
        self.init_state = self.jit(self._init_state, out_shardings=self.state_shardings)
        self.train_step = self.jit(self._train_step, in_shardings=(self.state_shardings, self.batch_sharding),
                                   out_shardings=(self.state_shardings, replicated), donate_argnums=(0,))

    def abstract_state(self, seed: int = 0) -> TrainState:
        """ShapeDtypeStructs of the train state, carrying its shardings."""
        shapes = self.init_state.eval_shape(jax.random.key(seed))
        return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            shapes, self.state_shardings)

    def abstract_batch(self, batch_size: int | None = None) -> dict[str, jax.ShapeDtypeStruct]:
        """The objective's batch shapes at the global batch size, with the batch sharding."""
        shapes = self.objective.init_batch(batch_size or self.config.batch_size)
        return jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=self.batch_sharding), shapes)

    def _init_state(self, rng: jax.Array) -> TrainState:
        params_rng, state_rng = jax.random.split(rng)
        params = nn.unbox(self._init_variables(params_rng))
        extra = nn.unbox(self.objective.init_extra(params))
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=self.tx.init(params),
                          extra=extra, rng=state_rng)

    def _grads(self, params: Any, extra: Any, batch: dict[str, jax.Array], rng: jax.Array):
        """Loss, metrics, new extra and gradients of the whole batch, in `grad_accum_steps` micro-batches."""
        (loss, (metrics, extra)), grads = self.objective.value_and_grad(params, extra, batch, rng,
                                                                         self.config.grad_accum_steps)
        return loss, metrics, extra, grads

    def _train_step(self, state: TrainState, batch: dict[str, jax.Array]) -> tuple[TrainState, dict]:
        batch = augment.unit_range(batch)  # uint8 images from the input pipeline → float32 [-1, 1]
        rng = jax.random.fold_in(state.rng, state.step)
        loss, metrics, extra, grads = self._grads(state.params, state.extra, batch, rng)
        grad_norm = optax.tree.norm(grads)
        ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

        def update(_):
            updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
            params = self.objective.project(optax.apply_updates(state.params, updates))
            return params, opt_state, self.objective.after_update(params, extra)

        # A bad step changes nothing. A branch, not a select of new and old values: the select keeps the old
        # optimizer state alive next to the new one, and XLA then copies every state buffer (+1.5 GiB at B/16).
        params, opt_state, extra = jax.lax.cond(ok, update, lambda _: (state.params, state.opt_state, state.extra),
                                                None)
        new = state.replace(step=state.step + 1, params=params, opt_state=opt_state, extra=extra)
        metrics = dict(metrics, loss=loss, grad_norm=grad_norm, lr=self.schedule(updates_applied(state)),
                       param_norm=optax.tree.norm(params), nonfinite=(~ok).astype(jnp.int32),
                       nonfinite_skipped=new.step - updates_applied(new))  # over the whole run, resumes included
        return new, metrics


def start_from(setup: Setup, state: TrainState, writer: JsonlWriter) -> TrainState:
    """The fresh state with `config.init_from`'s source arrays in its parameters (and `extra` rebuilt from them)."""
    params, filled = state.params, {}
    for init in init_from.sources(setup.config.init_from):
        source, origin = init_from.load_source(init)
        params, report = init_from.merge(params, source, init.include, list(init.rename))
        for path in report["copied_paths"]:
            if path in filled:
                raise init_from.InitFromError(f"{path} is filled by two init_from sources: {filled[path]} and "
                                              f"{origin}; narrow one's include")
            filled[path] = origin
        if jax.process_index() == 0:
            print(f"init_from {origin}: {report['copied']} arrays, {report['copied_params']:,} parameters copied",
                  flush=True)
        writer.write({"step": 0, "split": "init_from", "source": origin,
                      "copied": report["copied"], "copied_params": report["copied_params"]})
    extra = setup.jit(lambda p: nn.unbox(setup.objective.init_extra(p)),
                      out_shardings=setup.state_shardings.extra)(params)
    fresh = sorted(p for p in report["all_paths"] if p not in filled)
    if jax.process_index() == 0 and fresh:
        print(f"init_from: {len(fresh)} arrays keep their initialisation: {init_from.summarize(fresh)}", flush=True)
    writer.write({"step": 0, "split": "init_from", "fresh": fresh})
    return state.replace(params=params, extra=extra)


def updates_applied(state: TrainState) -> jax.Array:
    """Optimizer updates applied so far (the lr schedule's count): `step` minus skipped non-finite steps."""
    counts = [s.count for s in jax.tree.leaves(state.opt_state, is_leaf=_is_schedule_state)
              if _is_schedule_state(s)]
    return counts[0] if counts else state.step


def _is_schedule_state(x: Any) -> bool:
    """Whether `x` is the lr schedule's optax state."""
    return isinstance(x, optax.ScaleByScheduleState)


def _host_metrics(pending: list[tuple[int, dict]]) -> list[tuple[int, dict[str, float]]]:
    """Fetches queued device metrics to host floats."""
    fetched = jax.device_get([m for _, m in pending])
    return [(s, {k: float(np.asarray(v)) for k, v in m.items()}) for (s, _), m in zip(pending, fetched)]


def budget_batches(setup: Setup, batch_size: int) -> list[Any]:
    """The objective's batch shapes once per NaFlex training budget (drawn uniformly per step), or just once."""
    batch = setup.objective.init_batch(batch_size)
    budgets = getattr(setup.objective.data, "naflex", None)
    if budgets is None:
        return [batch]
    return [{**batch, "image": {k: jax.ShapeDtypeStruct(shape, dtype) for k, (shape, dtype) in
                                naflex_data.spec(batch_size, budgets.patch, b).items()}} for b in budgets.train]


def step_flops(setup: Setup, phase: int = 0) -> float:
    """Model FLOPs of one train step in the objective's `phase` (analytic, `scaling.compute`; under NaFlex the mean
    over the budgets, each drawn with equal probability); for a model without an analytic count, the traced step's
    (`traced_step_flops`)."""
    obj = setup.objective
    try:
        return float(np.mean([compute.train_step_flops(setup.model, batch, lambda b: obj.forward_flops(b, phase))
                              for batch in budget_batches(setup, setup.config.batch_size)]))
    except NotImplementedError:
        return traced_step_flops(setup) if obj.TRACED_FLOPS else 0.0


def traced_step_flops(setup: Setup) -> float:
    """The matmul FLOPs of the jitted train step's jaxpr at the configured batch: exact for what the step computes
    (frozen parameters' skipped weight gradients included), with any rematerialised recomputation counted too."""
    from vlm_jax.scaling.flops import jaxpr_flops

    return float(jaxpr_flops(setup.train_step.jaxpr(setup.abstract_state(), setup.abstract_batch())))


def phase_flops(setup: Setup) -> list[tuple[int, float]]:
    """[(first step, model FLOPs per step)] for each of the objective's FLOP phases."""
    return [(start, step_flops(setup, i)) for i, start in enumerate(setup.objective.flop_phases())]


def forward_gmacs(setup: Setup) -> float:
    """Forward GMACs per example (Cherti et al.'s unit: compute C = this × samples seen); 0 when not analytic."""
    try:
        return float(np.mean([compute.forward_gmacs_per_sample(setup.model, batch, setup.objective.forward_flops)
                              for batch in budget_batches(setup, setup.config.batch_size)]))
    except NotImplementedError:
        return 0.0


def peak_flops(setup: Setup) -> float:
    """MFU's denominator for this run's devices and matmul dtype: the chip table, or on CPU a probe of the matmul
    the step uses (XLA's dot, or the oneDNN bf16 kernel on a one-device mesh)."""
    devices = list(setup.mesh.devices.flat)
    dtype = matmul_dtype(setup.model)
    probe = None
    if dtype == "bfloat16" and len(devices) == 1 and devices[0].platform == "cpu" and onednn.available():
        probe = lambda _: onednn.measure_flops()  # noqa: E731
    return hardware.peak_flops(devices, dtype, probe)


def matmul_dtype(model: Any) -> str:
    """The matmul dtype of a model (a Flax module, or its config section): bfloat16 when any of its `dtype_mm`
    fields, in it or in the sub-configs and sub-modules it holds, is bfloat16; else float32."""
    seen: set[int] = set()

    def dtypes(node: Any) -> Iterator[str]:
        if id(node) in seen:
            return
        seen.add(id(node))
        if dataclasses.is_dataclass(node) and not isinstance(node, type):
            items = [(f.name, getattr(node, f.name, None)) for f in dataclasses.fields(node)
                     if f.name not in ("parent", "name")]
        elif isinstance(node, (dict, ml_collections.ConfigDict)):
            items = list(node.items())
        else:
            return
        for key, value in items:
            if key == "dtype_mm" and isinstance(value, str):
                yield value
            else:
                yield from dtypes(value)

    return "bfloat16" if "bfloat16" in set(dtypes(model)) else "float32"


def _log_inputs(events: EventWriter, host_batch: dict[str, Any], n: int = 16) -> None:
    """The first batch's image-shaped inputs (images; rendered text for CLIPPO) as TensorBoard image grids."""
    for key, value in host_batch.items():
        if isinstance(value, dict):  # NaFlex patch batches and bad-data counters are not pictures
            continue
        value = np.asarray(value)
        if value.ndim == 4 and value.shape[-1] in (1, 3):
            events.image(0, f"inputs/{key}", grid(value[:n]))


def run_evaluators(setup: Setup, state: TrainState, step: int, writer: JsonlWriter) -> dict[str, float]:
    """Runs every evaluator of the objective and logs the flat results."""
    results: dict[str, float] = {}
    for name, evaluator in setup.objective.evaluators().items():
        t0 = time.perf_counter()
        for key, value in evaluator(state.params, state.extra).items():
            results[f"{name}/{key}"] = value
        pictures = getattr(evaluator, "summary_images", None)  # optional: what the evaluator can show
        if pictures is not None and writer.mirror is not None and writer.mirror.enabled:
            for tag, image in pictures().items():
                writer.mirror.image(step, f"eval/{name}/{tag}", image)
        log.info("eval %s took %.1fs", name, time.perf_counter() - t0)
    writer.write({"step": step, "split": "eval", **results})
    return results


class _Preemption:
    """SIGTERM (preemption notice) → save at the next step boundary and stop; all hosts agree on the step."""

    def __init__(self):
        self.requested = False
        self._previous = None
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True

    def due(self, step: int) -> bool:
        """True at the step where every process should save and exit."""
        if jax.process_count() > 1:  # jax.distributed's coordination service relays the notice to every host
            from jax.experimental import multihost_utils
            return multihost_utils.reached_preemption_sync_point(step)
        return self.requested

    def restore(self) -> None:
        """Puts back the previous SIGTERM handler."""
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def train(config: ml_collections.ConfigDict, workdir: str | Path, stop_after: int | None = None,
          on_step: Callable[[int, dict], None] | None = None, allow_config_change: bool = False) -> dict[str, Any]:
    """Trains (or resumes) `config` in `workdir`; returns the final eval metrics and summary.

    Resuming under a config that changes the experiment raises `ConfigMismatchError` unless
    `allow_config_change` (then the change is logged); one that changes the state's structure always raises.
    """
    config = finalize_config(config)
    workdir = Path(workdir)
    is_main = jax.process_index() == 0
    config_json = config.to_json_best_effort()
    setup = Setup(config)
    objective = setup.objective
    local_batch = config.batch_size // jax.process_count()
    data = objective.train_data(local_batch, config.seed, jax.process_index(), jax.process_count())
    data_iter = iter(data)
    ckpt = Checkpointer(workdir / "checkpoints", every_steps=config.checkpoint.every_steps,
                        keep=config.checkpoint.keep, keep_period=config.checkpoint.keep_period,
                        async_save=config.checkpoint.async_save)
    changes: dict[str, Any] = {}
    prints = resume.fingerprint(resume.state_signature(setup.abstract_state(config.seed)),
                                resume.tokenizer_fingerprint(objective.tokenize_probes))

    def check(step: int, meta: dict[str, Any]) -> None:
        changes.update(resume.check_resume(meta.get("config"), config_json, step, allow_config_change,
                                           meta.get("fingerprint"), prints))

    try:
        restored = ckpt.restore_latest(setup.abstract_state(config.seed), data_iter, check_meta=check)
    except Exception:
        ckpt.close()
        raise
    if is_main:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "config.json").write_text(json.dumps(json.loads(config_json), indent=2))
        write_version(workdir)
    writer = JsonlWriter(workdir / "metrics.jsonl", enabled=is_main)
    prior_seconds = 0.0
    if restored is None:
        state = setup.init_state(jax.random.key(config.seed))
        start = 0
        if is_main:
            trim_jsonl(writer.path, -1)  # records of an attempt that died before its first checkpoint
        if init_from.active(config.init_from):
            state = start_from(setup, state, writer)
    else:
        state, meta = restored
        start = int(meta["step"])
        prior_seconds = float(meta.get("train_seconds", 0.0))
        log.info("Resumed from step %d", start)
        if is_main:
            dropped = trim_jsonl(writer.path, start)
            print(f"Resumed from checkpoint at step {start}" +
                  (f" (dropped {dropped} metric records logged after it)" if dropped else ""), flush=True)
            if changes:
                print("Resuming with config changes (--allow_config_change): " +
                      "; ".join(f"{k}: {o!r} → {n!r}" for k, (o, n) in changes.items()), flush=True)
                writer.write({"step": start, "split": "config_change",
                              "changes": {k: [o, n] for k, (o, n) in changes.items()}})

    writer.mirror = EventWriter(workdir, enabled=is_main and config.tensorboard, resume_step=start)
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
    frozen = setup.objective.frozen
    n_trainable = n_params if frozen is None else sum(
        int(np.prod(x.shape)) for x, f in zip(jax.tree.leaves(state.params), jax.tree.leaves(frozen)) if not f)
    if is_main:
        print(f"{n_params:,} parameters" + (f" ({n_trainable:,} trainable)" if frozen is not None else "") +
              f" | mesh {dict(setup.mesh.shape)} | global batch {config.batch_size} | "
              f"steps {start}→{config.total_steps}", flush=True)
    phases, peak = phase_flops(setup), config.peak_flops or peak_flops(setup)
    flops_per_step = phases[0][1]
    if is_main and flops_per_step:
        later = "".join(f", {f:.3e} from step {s + 1}" for s, f in phases[1:])
        print(f"model FLOPs per step {flops_per_step:.3e}{later} | peak {peak:.3e} FLOP/s "
              f"({'set' if config.peak_flops else 'measured' if jax.devices()[0].platform == 'cpu' else 'chip table'})",
              flush=True)
    measured = not config.peak_flops and jax.devices()[0].platform == "cpu"  # a probe, which load can depress
    progress = Progress(config.total_steps, start, config.batch_size, enabled=is_main and config.progress,
                        flops_per_step=phases, peak_flops=peak,
                        reprobe=(lambda: peak_flops(setup)) if measured else None)
    pending: list[tuple[int, dict]] = []
    step = start
    end = config.total_steps if stop_after is None else min(config.total_steps, stop_after)
    t_start = time.perf_counter()
    preemption = _Preemption()
    preempted = False
    elapsed = lambda: prior_seconds + time.perf_counter() - t_start  # noqa: E731  (all segments)
    data_stats: dict[str, float] = {}
    worker_counts: dict[int, dict[str, float]] = {}  # each grain worker's latest bad-data counts
    while step < end:
        host_batch = dict(next(data_iter))
        data_stats = robust.pop_counts(host_batch, worker_counts) or data_stats  # bad examples skipped so far (this process)
        if step == 0:
            _log_inputs(writer.mirror, host_batch)
        batch = shd.global_batch(host_batch, setup.batch_sharding)
        state, metrics = setup.train_step(state, batch)
        step += 1
        pending.append((step, metrics))
        last = step == end
        if step % config.log_every == 0 or last or ckpt.due(step, config.total_steps):
            for s, m in _host_metrics(pending):
                if m["nonfinite"] and config.nonfinite == "stop":
                    ckpt.close()
                    raise NonFiniteError(
                        f"Non-finite loss/gradient at step {s} (loss={m['loss']}, grad_norm={m['grad_norm']}); "
                        f"the update was not applied. Last good checkpoint: step {max(ckpt.steps(), default=0)}.")
                m.update(data_stats)
                if on_step:
                    on_step(s, m)
            pending.clear()
            timing = progress.update(step, m)
            writer.write({"step": step, "split": "train", **m, **timing})
        preempted = preemption.due(step) and not last
        if ckpt.due(step, config.total_steps) or preempted:
            ckpt.save(step, state, data_iter, {"step": step, "config": config_json, "train_seconds": elapsed(),
                                         "fingerprint": prints})
        if preempted:
            if is_main:
                print(f"Preempted: checkpoint saved at step {step}; rerun the same command to resume.", flush=True)
            break
        if config.eval_every and step % config.eval_every == 0 and not last:
            run_evaluators(setup, state, step, writer)
    preemption.restore()
    train_seconds = elapsed()
    ckpt.close()
    if preempted or (stop_after is not None and step < config.total_steps):
        writer.mirror.close()
        return {"step": step, "state": state, "setup": setup, "preempted": preempted}
    eval_results = run_evaluators(setup, state, step, writer)
    samples = step * config.batch_size
    gmacs = forward_gmacs(setup)
    summary = {"step": step, "train_seconds": train_seconds, "segment_seconds": train_seconds - prior_seconds,
               "params": n_params, "trainable_params": n_trainable, "flops_per_step": flops_per_step, "flop_phases": phases,
               "train_flops": progress.flops_between(0, step),
               "samples_seen": samples, "forward_gmacs_per_sample": gmacs, "train_gmacs": gmacs * samples,
               "peak_flops": progress.peak_flops, "mfu": progress.steady_mfu(), "evals": eval_results}
    writer.mirror.close()
    if is_main:
        (workdir / "results.json").write_text(json.dumps(summary, indent=2))
    return {**summary, "state": state, "setup": setup}
