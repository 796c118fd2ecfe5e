"""CLIP B/16 train step on GPU: samples/s, MFU and peak memory, bf16 matmuls, cuDNN flash attention.

    pip install -r benchmarks/requirements-gpu.txt      # jax[cuda12] at the project's jax pin
    python benchmarks/gpu_clip.py                        # B/16 @ 224, batch 256 per GPU, every GPU data-parallel
    python benchmarks/gpu_clip.py --tiny                 # a small model on any backend (checks the script itself)

The step is the trainer's own `Setup.train_step` (AdamW, clipping, float32 parameters and optimizer state, bf16
matmuls and residual stream); attention goes through `jax.nn.dot_product_attention` with the cuDNN kernel on
GPU ("xla" elsewhere). MFU = analytic model FLOPs per step ÷ median step time ÷ the chip table's dense bf16 peak.
Appends a JSON line to benchmarks/gpu_clip.jsonl and prints a Markdown row.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import ml_collections

from vlm_jax.scaling import hardware
from vlm_jax.train.steptime import random_batch, time_steps
from vlm_jax.train.trainer import Setup, finalize_config, step_flops

OUT = Path(__file__).with_name("gpu_clip.jsonl")


def clip_config(batch: int, tiny: bool, attention: str) -> ml_collections.ConfigDict:
    """CLIP B/16 (text 512 × 12, context 77, vocab 49,408), or a tiny stand-in with the same structure."""
    common = dict(dtype_mm="bfloat16", residual_dtype="bfloat16", attention_impl=attention)
    c = ml_collections.ConfigDict()
    c.objective, c.batch_size, c.total_steps = "contrastive", batch, 1000
    c.mesh = [("data", -1), ("fsdp", 1), ("tensor", 1)]
    res, vocab, ctx = (32, 1000, 16) if tiny else (224, 49_408, 77)
    c.data = dict(name="synthetic", image_size=res, text_len=ctx, vocab_size=vocab)
    image = dict(width=64, depth=2, mlp_dim=256, num_heads=2, patch_size=(8, 8)) if tiny else dict(variant="B/16")
    text = dict(width=64, depth=2, mlp_dim=256, num_heads=2) if tiny else dict(width=512, depth=12, mlp_dim=2048,
                                                                              num_heads=8)
    c.model = dict(image=dict(pool_type="tok", **image, **common),
                   text=dict(vocab_size=vocab, max_len=ctx, pool_type="last", **text, **common),
                   embed_dim=64 if tiny else 512, temperature_init=1 / 0.07)
    c.optim = dict(name="adamw", lr=1e-4, b2=0.98, weight_decay=0.2, warmup_steps=0)
    return finalize_config(c)


def measure(config: ml_collections.ConfigDict, steps: int, peak: float | None = None) -> dict:
    """Median step time of `steps` steps on a fixed random batch, after one compiling step."""
    setup = Setup(config)
    timed = time_steps(setup, random_batch(setup, config.data.vocab_size), steps)
    step, compile_s, metrics = timed["step_s"], timed["first_step_s"], timed["metrics"]
    devices = list(setup.mesh.devices.flat)
    peak = peak if peak is not None else hardware.peak_flops(devices, "bfloat16")
    flops = step_flops(setup)
    stats = [d.memory_stats() or {} for d in devices]
    return dict(device=devices[0].device_kind, devices=len(devices), batch=config.batch_size,
                attention=config.model.image.attention_impl, step_s=step, compile_s=compile_s,
                samples_per_s=config.batch_size / step, flops_per_step=flops, peak_flops=peak,
                mfu=flops / step / peak if peak else None, loss=float(metrics["loss"]),
                peak_memory_gib=max((s.get("peak_bytes_in_use", 0) for s in stats), default=0) / 2 ** 30)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch_per_device", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--tiny", action="store_true", help="small model: check the script on CPU")
    parser.add_argument("--attention", default=None, help="einsum | xla | cudnn (default: cudnn on GPU, else xla)")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args(argv)
    on_gpu = jax.devices()[0].platform == "gpu"
    attention = args.attention or ("cudnn" if on_gpu else "xla")
    config = clip_config(args.batch_per_device * jax.device_count(), args.tiny, attention)
    result = measure(config, args.steps)
    result["date"] = time.strftime("%Y-%m-%d")
    with open(args.out, "a") as f:
        f.write(json.dumps(result) + "\n")
    mfu = f"{100 * result['mfu']:.1f}%" if result["mfu"] else "n/a"
    print("| device | batch | attention | samples/s | step (ms) | MFU | peak memory (GiB) | compile (s) |")
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    print(f"| {result['devices']}× {result['device']} | {result['batch']} | {attention} | "
          f"{result['samples_per_s']:.1f} | {1e3 * result['step_s']:.1f} | {mfu} | {result['peak_memory_gib']:.1f} | "
          f"{result['compile_s']:.0f} |")
    return result


if __name__ == "__main__":
    main()
