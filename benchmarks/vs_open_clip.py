"""vlm_jax vs open_clip, CLIP train step on this machine, measured alternately in one run; writes a table.

    bash benchmarks/setup_open_clip.sh          # benchmark-only venv .bench-venv (torch, torchvision, open_clip)
    scripts/vlm python benchmarks/vs_open_clip.py [--configs tiny,s16,b16] [--reps 2]

Each measurement is its own process (clean peak RSS, compile counted separately): vlm_jax's real `Setup` /
`train_step` (AdamW, clipping, its mixed-precision policy) on 1 and on 2 host devices, and open_clip's CLIP with
`ClipLoss` + `torch.optim.AdamW` in fp32 and under bf16 autocast. Same shapes, fixed random batch, tcmalloc for
both. The matmul ceilings (jax fp32/bf16, torch fp32/bf16 at 2048²) are measured in the same run.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH_PY = ROOT / ".bench-venv" / "bin" / "python"

# name: image px, patch, vision width × layers, text width × layers, context, vocab, embed, batch, timed steps
CONFIGS = {
    "tiny": dict(px=64, patch=8, vw=256, vl=6, tw=256, tl=6, ctx=32, vocab=8192, embed=256, batch=128, steps=20),
    "s16": dict(px=64, patch=16, vw=384, vl=12, tw=384, tl=12, ctx=32, vocab=8192, embed=384, batch=64, steps=20),
    "b16": dict(px=224, patch=16, vw=768, vl=12, tw=512, tl=12, ctx=77, vocab=49408, embed=512, batch=8, steps=6),
}
HEAD_WIDTH = 64  # open_clip's vision heads = width / 64; text heads likewise here


def _peak_rss_gib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def jax_side(cfg: dict, devices: int, dtype: str) -> dict:
    """vlm_jax's train step (the trainer's own Setup) on a fixed batch."""
    import jax
    import ml_collections
    import numpy as np

    from vlm_jax.train.steptime import random_batch, time_steps
    from vlm_jax.train.trainer import Setup, finalize_config, step_flops

    c = ml_collections.ConfigDict()
    c.objective, c.batch_size, c.total_steps, c.mesh = "contrastive", cfg["batch"], 1000, [("data", devices)]
    c.data = dict(name="synthetic", image_size=cfg["px"], text_len=cfg["ctx"], vocab_size=cfg["vocab"])
    common = dict(dtype_mm=dtype)
    c.model = dict(image=dict(width=cfg["vw"], depth=cfg["vl"], mlp_dim=4 * cfg["vw"], num_heads=cfg["vw"] // HEAD_WIDTH,
                              patch_size=(cfg["patch"], cfg["patch"]), pool_type="tok", **common),
                   text=dict(vocab_size=cfg["vocab"], width=cfg["tw"], depth=cfg["tl"], mlp_dim=4 * cfg["tw"],
                             num_heads=cfg["tw"] // HEAD_WIDTH, max_len=cfg["ctx"], **common),
                   embed_dim=cfg["embed"], temperature_init=1 / 0.07)
    c.optim = dict(name="adamw", lr=1e-4, weight_decay=0.1, b2=0.98, warmup_steps=0)
    setup = Setup(finalize_config(c))
    timed = time_steps(setup, random_batch(setup, cfg["vocab"]), cfg["steps"])
    params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(timed["state"].params))
    return dict(params=params, first_step_s=timed["first_step_s"], step_s=timed["step_s"], flops=step_flops(setup),
                rss_gib=_peak_rss_gib())


def torch_side(cfg: dict, dtype: str) -> dict:
    """open_clip's CLIP + ClipLoss + AdamW, fp32 or bf16 autocast."""
    import torch
    from open_clip import CLIP
    from open_clip.loss import ClipLoss

    torch.manual_seed(0)
    model = CLIP(embed_dim=cfg["embed"],
                 vision_cfg=dict(image_size=cfg["px"], patch_size=cfg["patch"], width=cfg["vw"], layers=cfg["vl"],
                                 head_width=HEAD_WIDTH, mlp_ratio=4.0),
                 text_cfg=dict(context_length=cfg["ctx"], vocab_size=cfg["vocab"], width=cfg["tw"],
                               heads=cfg["tw"] // HEAD_WIDTH, layers=cfg["tl"]), output_dict=True)
    model.train()
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, betas=(0.9, 0.98))
    loss_fn = ClipLoss()
    g = torch.Generator().manual_seed(0)
    image = torch.rand((cfg["batch"], 3, cfg["px"], cfg["px"]), generator=g) * 2 - 1
    text = torch.randint(3, cfg["vocab"], (cfg["batch"], cfg["ctx"]), generator=g)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
            out = model(image, text)
            loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    t0 = time.perf_counter()
    step()
    first = time.perf_counter() - t0
    times = []
    for _ in range(cfg["steps"]):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return dict(params=params, first_step_s=first, step_s=statistics.median(times), rss_gib=_peak_rss_gib())


def jax_matmul(dtype: str) -> dict:
    """XLA's dot in `dtype`, or ("onednn") vlm_jax's oneDNN bf16 kernel."""
    from vlm_jax.scaling.hardware import measure_matmul_flops

    if dtype != "onednn":
        return dict(gflops=measure_matmul_flops(dtype) / 1e9)
    from vlm_jax.kernels import onednn

    return dict(gflops=onednn.measure_flops() / 1e9)


def torch_matmul(dtype: str) -> dict:
    import torch

    a, b = (torch.randn(2048, 2048).to(getattr(torch, dtype)) for _ in range(2))
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - t0)
    return dict(gflops=2 * 2048 ** 3 / best / 1e9)


def _child(args: argparse.Namespace) -> None:
    cfg = CONFIGS.get(args.config, {})
    if args.side == "jax":
        out = jax_side(cfg, args.devices, args.dtype)
    elif args.side == "torch":
        out = torch_side(cfg, args.dtype)
    elif args.side == "jax_matmul":
        out = jax_matmul(args.dtype)
    else:
        out = torch_matmul(args.dtype)
    print("RESULT " + json.dumps(out), flush=True)


def _spawn(side: str, config: str = "", devices: int = 1, dtype: str = "float32") -> dict:
    """One measurement in a fresh process (vlm_jax's venv for jax, .bench-venv for torch)."""
    env = dict(os.environ)
    if side.startswith("jax"):
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
        if side == "jax_xla":  # bf16 through XLA's own dot (converted to float32), not the oneDNN kernel
            env["VLM_JAX_ONEDNN"] = "0"
            side = "jax"
        python = sys.executable
    else:
        python = str(BENCH_PY)
        env["PYTHONPATH"] = ""
    cmd = [python, __file__, "--child", side, "--config", config, "--devices", str(devices), "--dtype", dtype]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][7:])


VARIANTS = (("vlm_jax fp32, 1 device", "jax", 1, "float32"), ("vlm_jax fp32, 2 host devices", "jax", 2, "float32"),
            ("vlm_jax bf16, XLA's dot, 1 device", "jax_xla", 1, "bfloat16"),
            ("vlm_jax bf16, oneDNN kernel, 1 device", "jax", 1, "bfloat16"),
            ("open_clip fp32", "torch", 1, "float32"), ("open_clip bf16 autocast", "torch", 1, "bfloat16"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--config", default="")
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--configs", default="tiny,s16,b16")
    parser.add_argument("--reps", type=int, default=2, help="alternating rounds; the median is reported")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "vs_open_clip.md"))
    args = parser.parse_args()
    if args.child:
        args.side = args.child
        return _child(args)
    if not BENCH_PY.exists():
        raise SystemExit("run `bash benchmarks/setup_open_clip.sh` first (creates .bench-venv)")
    ceilings = _ceilings()
    rows = {}
    for name in args.configs.split(","):
        runs: dict[str, list[dict]] = {v[0]: [] for v in VARIANTS}
        for _ in range(args.reps):
            for label, side, devices, dtype in VARIANTS:  # alternating: drift hits every variant alike
                r = _spawn(side, name, devices, dtype)
                runs[label].append(r)
                print(f"{name:5s} {label:32s} {CONFIGS[name]['batch'] / r['step_s']:7.2f} samples/s  "
                      f"first step {r['first_step_s']:5.1f} s  RSS {r['rss_gib']:.2f} GiB", flush=True)
        rows[name] = runs
    ceilings = {k: max(v, w) for (k, v), w in zip(ceilings.items(), _ceilings().values())}  # best of start, end
    _write(args.out, rows, ceilings)


def _ceilings() -> dict[str, float]:
    """Matmul GFLOP/s of both libraries in both dtypes, each in a fresh process."""
    out = {f"jax {d}": _spawn("jax_matmul", dtype=d)["gflops"] for d in ("float32", "bfloat16", "onednn")}
    out.update({f"torch {d}": _spawn("torch_matmul", dtype=d)["gflops"] for d in ("float32", "bfloat16")})
    print("matmul 2048² GFLOP/s:", {k: round(v) for k, v in out.items()}, flush=True)
    return out


def _write(path: str, rows: dict, ceilings: dict) -> None:
    import platform

    flops_of = {name: next(r["flops"] for r in runs["vlm_jax fp32, 1 device"]) for name, runs in rows.items()}
    lines = ["# vlm_jax vs open_clip: CLIP train step on this CPU",
             "", f"Measured {time.strftime('%Y-%m-%d')} on `{platform.processor() or platform.machine()}`, "
             f"{os.cpu_count()} cores, alternating processes, median of the rounds. Command: "
             "`scripts/vlm python benchmarks/vs_open_clip.py`.",
             "", "Matmul ceiling (2048², GFLOP/s): " + ", ".join(f"{k} {v:.0f}" for k, v in ceilings.items()), "",
             "| config | variant | params | samples/s | × open_clip fp32 | × open_clip bf16 | GFLOP/s | % of its ceiling "
             "| first step (s) | peak RSS (GiB) |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, runs in rows.items():
        batch = CONFIGS[name]["batch"]
        rate = {k: batch / statistics.median(r["step_s"] for r in v) for k, v in runs.items()}
        for label, side, _, dtype in VARIANTS:
            v = runs[label]
            onednn = label.endswith("oneDNN kernel, 1 device")
            ceiling = ceilings["jax onednn" if onednn else f"{'torch' if side == 'torch' else 'jax'} {dtype}"]
            gflops = flops_of[name] / batch * rate[label] / 1e9
            lines.append(f"| {name} | {label} | {v[0]['params']:,} | {rate[label]:.2f} | "
                         f"{rate[label] / rate['open_clip fp32']:.2f} | {rate[label] / rate['open_clip bf16 autocast']:.2f} "
                         f"| {gflops:.0f} | {100 * gflops / ceiling:.0f}% | "
                         f"{statistics.median(r['first_step_s'] for r in v):.1f} | "
                         f"{max(r['rss_gib'] for r in v):.2f} |")
    lines += ["", "GFLOP/s counts vlm_jax's analytic model FLOPs of the step (the same shapes) for both sides; the "
              "ceiling is the 2048² matmul rate of the library and dtype the variant's matmuls run in (jax onednn: "
              "vlm_jax's bf16 kernel, oneDNN 3.2; torch bfloat16: the oneDNN inside torch)."]
    Path(path).write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
