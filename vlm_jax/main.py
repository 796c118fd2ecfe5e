"""CLI: `python -m vlm_jax.main --config experiments/x.py[:arg] --workdir DIR [--config.key=value ...]`."""
from __future__ import annotations

import argparse
import logging
import os
import sys


def _parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """Splits CLI flags from `--config.key=value` overrides."""
    from vlm_jax.config import split_cli_overrides

    overrides, rest = split_cli_overrides(argv)
    parser = argparse.ArgumentParser(prog="python -m vlm_jax.main", description=__doc__)
    parser.add_argument("--config", required=True, help="experiments/<file>.py[:arg]")
    parser.add_argument("--workdir", required=True, help="checkpoints, metrics.jsonl, results.json go here")
    parser.add_argument("--print_config", action="store_true", help="print the final config and exit")
    parser.add_argument("--allow_config_change", action="store_true",
                        help="resume a checkpoint written under another config (the differences are logged)")
    parser.add_argument("--coordinator_address", default=None, help="multi-host: host:port of process 0")
    parser.add_argument("--num_processes", type=int, default=None)
    parser.add_argument("--process_id", type=int, default=None)
    return parser.parse_args(rest), overrides


def host_device_count(batch_size: int, cores: int, cap: int = 8, dtype: str = "float32") -> int:
    """XLA host devices for a CPU run: one per core (the default run steps 1.07× faster on 2 devices than on 1 on
    2 cores, benchmarks/pipeline_vs_step.md), at most `cap`, and a divisor of the batch so the data axis splits
    it evenly. bf16 runs get one device: the oneDNN kernel needs a one-device mesh and beats 2 fp32 devices
    (1,200 vs 1,040 samples/s on the default model, 2026-11-30) where this CPU runs the kernel."""
    from vlm_jax.kernels import onednn

    if dtype == "bfloat16" and onednn.supported():
        return 1
    return max(n for n in range(1, max(1, min(cores, cap)) + 1) if batch_size % n == 0)


def use_whole_cpu(batch_size: int, dtype: str = "float32") -> int | None:
    """Sets XLA_FLAGS to `host_device_count` CPU devices unless the user chose a count (or VLM_JAX_HOST_DEVICES
    does); takes effect when the CPU backend starts, i.e. before anything asks JAX for its devices."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" in flags:
        return None
    wanted = os.environ.get("VLM_JAX_HOST_DEVICES")
    n = int(wanted) if wanted else host_device_count(batch_size, len(os.sched_getaffinity(0)), dtype=dtype)
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()
    return n


def main(argv: list[str] | None = None) -> dict:
    """Loads the config, trains (or resumes) and prints the results table."""
    args, overrides = _parse(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=os.environ.get("VLM_JAX_LOGLEVEL", "WARNING"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import jax

    if args.coordinator_address or os.environ.get("VLM_JAX_DISTRIBUTED"):
        jax.distributed.initialize(coordinator_address=args.coordinator_address,
                                   num_processes=args.num_processes, process_id=args.process_id)
    from vlm_jax.config import ConfigError, apply_overrides, load_config
    from vlm_jax.evals.report import format_results
    from vlm_jax.train.trainer import finalize_config, train

    try:
        config = apply_overrides(finalize_config(load_config(args.config)), overrides)
    except ConfigError as err:
        raise SystemExit(f"Config error: {err}") from None
    if args.print_config:
        print(config)
        return {}
    if not (args.coordinator_address or os.environ.get("VLM_JAX_DISTRIBUTED")):  # processes already split cores
        from vlm_jax.train.trainer import matmul_dtype

        use_whole_cpu(config.batch_size // config.grad_accum_steps, matmul_dtype(config.model))
    from vlm_jax.train.resume import ConfigMismatchError

    try:
        out = train(config, args.workdir, allow_config_change=args.allow_config_change)
    except ConfigMismatchError as err:
        raise SystemExit(f"Config error: {err}") from None
    if out.get("preempted"):
        return out  # checkpoint saved at the current step; the same command resumes
    if jax.process_index() == 0:
        print(format_results(out["evals"], title=f"{args.config} — {out['step']} steps, "
                                                 f"{out['train_seconds'] / 60:.1f} min training"))
        from vlm_jax.train.plot import plot_curves

        print(run_summary(out, args.workdir, plot_curves(args.workdir)))
    return out


def run_summary(out: dict, workdir: str, curves: object) -> str:
    """The lines printed under the results table: speed, and where everything the run wrote is."""
    w = workdir.rstrip("/")
    seconds = out["train_seconds"]
    mfu = f", MFU {100 * out['mfu']:.0f}%" if out.get("mfu") else ""
    return "\n".join([
        f"\nTrained {out['step']} steps, {out['samples_seen']:,} samples in {seconds / 60:.1f} min "
        f"({out['samples_seen'] / max(seconds, 1e-9):,.0f} samples/s{mfu}); {out['params']:,} parameters, "
        f"{out['train_gmacs']:.4g} training GMACs",
        f"Results:     {w}/results.json (every metric), {w}/metrics.jsonl (curves), {curves}",
        f"Checkpoint:  {w}/checkpoints (step {out['step']}); in Python: vlm_jax.load({w!r})",
        f"TensorBoard: tensorboard --logdir {w}",
    ])


if __name__ == "__main__":
    main()
