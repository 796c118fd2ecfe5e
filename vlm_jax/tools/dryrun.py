"""Compile an experiment's real train step for a TPU slice on this (CPU) machine: does it fit, how fast?

  python -m vlm_jax.tools.dryrun --config experiments/two_tower_scale.py:variant=B/16 --topology v5p-128 \
      [--num_slices 2] [--mfu 0.4] [--json out.json] [--config.key=value ...]

Needs libtpu (`pip install -e .[tpu-aot]`); no TPU is touched. The train step, mesh and axis rules are the
ones training uses; inputs are abstract arrays with the training shardings.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import re
import sys
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from vlm_jax.scaling.flops import jaxpr_flops
from vlm_jax.scaling.hardware import Chip
from vlm_jax.train.optim import path_str

_UNITS = {"": 1, "K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}


@dataclasses.dataclass
class Report:
    """What a dry run found; bytes and FLOPs are per chip unless named total."""
    topology: str
    chip: str
    num_devices: int
    mesh: dict[str, int]
    global_batch: int
    batch_per_chip: float
    fits: bool
    hbm_bytes: int
    required_bytes: int | None  # peak (fits) or the compiler's requirement (does not fit)
    params_bytes: int
    opt_state_bytes: int
    extra_bytes: int
    num_params: int
    params_total_bytes: int  # all parameters, unsharded
    model_flops_total: float  # one train step, matmul FLOPs, no remat recompute (the MFU numerator)
    hardware_flops_total: float  # including remat recompute
    xla_flops_per_device: float | None  # XLA cost analysis (counts loop bodies once)
    step_seconds_at_peak: float
    step_seconds_at_mfu: float
    mfu: float
    largest: list[dict[str, Any]]
    compile_seconds: float
    error: str | None = None
    hints: list[str] = dataclasses.field(default_factory=list)

    @property
    def samples_per_second_at_mfu(self) -> float:
        """Global samples/s at the assumed MFU."""
        return self.global_batch / self.step_seconds_at_mfu


def _itemsize(dtype: Any) -> int:
    """Bytes per element (PRNG keys: 8)."""
    try:
        return np.dtype(dtype).itemsize
    except TypeError:  # PRNG key arrays
        return 8


def _state_bytes(tree: Any) -> int:
    """Bytes of one shard per leaf, summed: what each device holds."""
    return int(sum(math.prod(x.sharding.shard_shape(x.shape)) * _itemsize(x.dtype) for x in jax.tree.leaves(tree)))


def parse_oom(message: str) -> tuple[int | None, int | None]:
    """(required, available) bytes from an XLA out-of-memory message, when it states them."""
    num = r"([\d.]+)\s*([KMGT]?)i?B?"
    for pattern in (rf"required[^()]*\({num}\)[^()]*available[^()]*\({num}\)",
                    rf"[Uu]sed {num} of {num}"):
        m = re.search(pattern, message)
        if m:
            need = float(m.group(1)) * _UNITS[m.group(2)]
            have = float(m.group(3)) * _UNITS[m.group(4)]
            return int(need), int(have)
    return None, None


def _without_remat(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy with every model remat_policy set to "none" (for model FLOPs)."""
    out = copy.deepcopy(config)

    def walk(section: Any) -> None:
        for key in list(section.keys()):
            if key == "remat_policy":
                section[key] = "none"
            elif isinstance(section[key], ml_collections.ConfigDict):
                walk(section[key])
    walk(out.model)
    return out


def _step_flops(setup: Any, state: Any, batch: Any) -> float:
    """Matmul FLOPs of one global train step."""
    return jaxpr_flops(setup.train_step.jaxpr(state, batch))


def _replication_hint(report: Report) -> list[str]:
    """Flags parameters left replicated because the fsdp size divides none of their dimensions."""
    fsdp = report.mesh.get("fsdp", 1) * report.mesh.get("fsdp2", 1)
    ideal = report.params_total_bytes / report.num_devices * report.mesh.get("data", 1)
    if fsdp > 1 and report.params_bytes > 2 * ideal:
        return [f"parameters take {report.params_bytes / 2**20:.0f} MiB per chip, {report.params_bytes / ideal:.0f}× "
                f"the fully sharded size: fsdp={fsdp} divides none of the dimensions of most arrays, so they stay "
                f"replicated; split arrays over two dimensions (--config.fsdp_dims=2d) or pick an fsdp size that "
                f"divides the model widths (e.g. "
                f"--config.mesh=\"[('data', -1), ('fsdp', {_divisor_hint(report, fsdp)}), ('tensor', 1)]\")"]
    return []


def _divisor_hint(report: Report, fsdp: int) -> int:
    """The largest power of two ≤ fsdp dividing the leading dims of the largest arrays."""
    dims = [d for a in report.largest for d in a["shape"] if d > 64]
    size = 1
    while size * 2 <= fsdp and all(d % (size * 2) == 0 for d in dims[:4]):
        size *= 2
    return size


def _hints(report: Report, config: ml_collections.ConfigDict) -> list[str]:
    """What to change when it does not fit."""
    hints = _replication_hint(report)
    state = report.params_bytes + report.opt_state_bytes + report.extra_bytes
    if report.mesh.get("fsdp", 1) * report.mesh.get("fsdp2", 1) < report.num_devices and state > 0.1 * report.hbm_bytes:
        hints.append(f"parameters + optimizer state take {state / 2**30:.2f} GiB per chip: shard them over more "
                     f"chips, e.g. --config.mesh=\"[('data', 1), ('fsdp', -1), ('tensor', 1)]\"")
    remat = [k for k, v in config.model.items() if isinstance(v, ml_collections.ConfigDict)
             and v.get("remat_policy", "full") != "full"]
    if remat:
        hints.append("recompute more activations in the backward pass: " +
                     " ".join(f"--config.model.{k}.remat_policy=full" for k in remat))
    hints.append(f"{report.batch_per_chip:g} samples per chip: --config.grad_accum_steps=2 (the same global batch "
                 f"in two micro-batches; contrastive losses keep every negative through GradCache) or a smaller "
                 f"--config.batch_size")
    return hints


def dry_run(config: ml_collections.ConfigDict, topology: str, num_slices: int = 1, mfu: float = 0.4,
            top_k: int = 5) -> Report:
    """Builds, lowers and compiles the train step of `config` for `num_slices` × `topology`."""
    from vlm_jax.tools import topology as topo_lib
    from vlm_jax.train.trainer import Setup

    chip, devices = topo_lib.devices(topology, num_slices)
    config = copy.deepcopy(config)
    if num_slices > 1 and not config.dcn_mesh:
        config.dcn_mesh = [("data", num_slices)]  # data parallel across slices unless the config says otherwise
    setup = Setup(config, devices=devices)
    if setup.mesh.size != len(devices):
        raise ValueError(f"Mesh {dict(setup.mesh.shape)} covers {setup.mesh.size} of {len(devices)} devices; "
                         f"size one axis -1 to span the slice")
    state, batch = setup.abstract_state(), setup.abstract_batch()

    hardware_flops = _step_flops(setup, state, batch)
    plain = Setup(_without_remat(config), devices=devices)
    model_flops = _step_flops(plain, state, batch)

    params = list(jax.tree_util.tree_leaves_with_path(state.params))
    largest = sorted(params, key=lambda kv: -math.prod(kv[1].shape))[:top_k]
    n = len(devices)
    peak = chip.bf16_flops * n
    report = Report(
        topology=topology + (f" × {num_slices} slices" if num_slices > 1 else ""), chip=chip.name,
        num_devices=n, mesh={k: int(v) for k, v in setup.mesh.shape.items()}, global_batch=config.batch_size,
        batch_per_chip=config.batch_size / n, fits=False, hbm_bytes=chip.hbm_bytes, required_bytes=None,
        params_bytes=_state_bytes(state.params), opt_state_bytes=_state_bytes(state.opt_state),
        extra_bytes=_state_bytes(state.extra), num_params=sum(math.prod(x.shape) for _, x in params),
        params_total_bytes=sum(math.prod(x.shape) * _itemsize(x.dtype) for _, x in params),
        model_flops_total=model_flops, hardware_flops_total=hardware_flops, xla_flops_per_device=None,
        step_seconds_at_peak=model_flops / peak, step_seconds_at_mfu=model_flops / (peak * mfu), mfu=mfu,
        largest=[{"name": path_str(p), "shape": list(x.shape), "spec": str(x.sharding.spec),
                  "bytes_per_chip": math.prod(x.sharding.shard_shape(x.shape)) * _itemsize(x.dtype)}
                 for p, x in largest],
        compile_seconds=0.0)
    start = time.perf_counter()
    try:
        compiled = setup.train_step.compile(state, batch)  # the executable training would run
    except Exception as err:  # noqa: BLE001 - XLA raises JaxRuntimeError / XlaRuntimeError
        report.compile_seconds = time.perf_counter() - start
        message = str(err)
        if "RESOURCE_EXHAUSTED" not in message and "out of memory" not in message.lower():
            raise
        need, have = parse_oom(message)
        report.required_bytes, report.hbm_bytes = need, have or chip.hbm_bytes
        report.error = message.splitlines()[0][:500]
        report.hints = _hints(report, config)
        return report
    report.compile_seconds = time.perf_counter() - start
    memory = compiled.memory_analysis()
    report.required_bytes = int(memory.peak_memory_in_bytes) if memory is not None else None
    report.fits = report.required_bytes is None or report.required_bytes <= report.hbm_bytes
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    report.xla_flops_per_device = float(cost.get("flops", 0.0)) if cost else None
    report.hints = _hints(report, config) if not report.fits else _replication_hint(report)
    return report


def _gib(x: int | None) -> str:
    """Bytes as GiB text."""
    return "?" if x is None else f"{x / 2 ** 30:.2f} GiB"


def _secs(x: float) -> str:
    """Seconds as text, in ms below one second."""
    return f"{x:.2f} s" if x >= 1 else f"{1e3 * x:.1f} ms"


def format_report(r: Report) -> str:
    """Human-readable summary."""
    verdict = "FITS" if r.fits else "DOES NOT FIT"
    lines = [
        f"{r.topology} ({r.num_devices} × {r.chip}, {_gib(r.hbm_bytes)} HBM per chip), mesh {r.mesh}",
        f"  {verdict}: {'peak' if r.fits else 'needs'} {_gib(r.required_bytes)} of {_gib(r.hbm_bytes)} per chip"
        + (f" ({100 * r.required_bytes / r.hbm_bytes:.0f}%)" if r.required_bytes else ""),
        f"  params {r.num_params / 1e6:.1f}M; per chip: params {_gib(r.params_bytes)}, optimizer state "
        f"{_gib(r.opt_state_bytes)}, extra state {_gib(r.extra_bytes)}",
        f"  batch {r.global_batch} ({r.batch_per_chip:g} per chip); model FLOPs/step {r.model_flops_total:.3e} "
        f"({r.model_flops_total / r.num_devices:.3e} per chip; {r.hardware_flops_total:.3e} with remat)",
        f"  predicted step: {_secs(r.step_seconds_at_peak)} at peak, {_secs(r.step_seconds_at_mfu)} at "
        f"{100 * r.mfu:.0f}% MFU ({r.samples_per_second_at_mfu:,.0f} samples/s)",
    ]
    if r.xla_flops_per_device is not None:
        lines.append(f"  XLA cost analysis: {r.xla_flops_per_device:.3e} FLOPs per chip (loop bodies counted once)")
    lines.append("  largest arrays: " + "; ".join(
        f"{a['name']} {tuple(a['shape'])} {a['spec']} → {a['bytes_per_chip'] / 2**20:.1f} MiB/chip"
        for a in r.largest))
    if r.error:
        lines.append(f"  compiler: {r.error}")
    lines += [f"  hint: {h}" for h in r.hints]
    lines.append(f"  compiled in {r.compile_seconds:.1f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> Report:
    """CLI entry point."""
    from vlm_jax.config import ConfigError, apply_overrides, load_config, split_cli_overrides
    from vlm_jax.train.trainer import finalize_config

    jax.config.update("jax_platforms", "cpu")  # compile for the topology; never touch a local accelerator
    overrides, rest = split_cli_overrides(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m vlm_jax.tools.dryrun", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="experiments/<file>.py[:arg]")
    parser.add_argument("--topology", required=True, help="v5p:4x4x4, v5e:16x16, v5p-128, v5e-256, v4-8, v6e-64 …")
    parser.add_argument("--num_slices", type=int, default=1, help="slices joined over DCN (data parallel)")
    parser.add_argument("--mfu", type=float, default=0.4, help="assumed model FLOPs utilisation")
    parser.add_argument("--json", default=None, help="also write the report as JSON here")
    args = parser.parse_args(rest)
    try:
        config = apply_overrides(finalize_config(load_config(args.config)), overrides)
    except ConfigError as err:
        raise SystemExit(f"Config error: {err}") from None
    report = dry_run(config, args.topology, args.num_slices, args.mfu)
    print(f"{args.config}\n{format_report(report)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(dataclasses.asdict(report), config=args.config), f, indent=1)
    return report


if __name__ == "__main__":
    main()
