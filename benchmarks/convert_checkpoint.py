"""Time and peak memory of converting a ViT-B/16-sized checkpoint: HF CLIPModel ViT-B/16 shapes (vision 768 wide,
12 layers, 224 px; text 512 wide, 12 layers, 49,408 tokens; projection 512), random float32 weights written with
vlm_jax's own safetensors writer, imported (`--from hf`) and exported back (`--to hf`, `--to open_clip`) through
`python -m vlm_jax.tools.convert`, each in a fresh process. Peak memory is the child's maximum resident set
(getrusage); "JAX baseline" is the same interpreter importing the converter and initialising the CPU backend.

  scripts/vlm python benchmarks/convert_checkpoint.py [--out benchmarks/convert_checkpoint.md] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

VISION = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, image_size=224,
              patch_size=16, hidden_act="quick_gelu", layer_norm_eps=1e-5, num_channels=3)
TEXT = dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8, vocab_size=49408,
            max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5, pad_token_id=1,
            bos_token_id=49406, eos_token_id=49407)
PROJ = 512


def shapes() -> dict[str, tuple[int, ...]]:
    """Every tensor of an HF CLIPModel with these sizes."""
    out: dict[str, tuple[int, ...]] = {}
    for tower, cfg in (("vision_model", VISION), ("text_model", TEXT)):
        d, m = cfg["hidden_size"], cfg["intermediate_size"]
        for i in range(cfg["num_hidden_layers"]):
            p = f"{tower}.encoder.layers.{i}."
            for n in "qkv":
                out[p + f"self_attn.{n}_proj.weight"], out[p + f"self_attn.{n}_proj.bias"] = (d, d), (d,)
            out[p + "self_attn.out_proj.weight"], out[p + "self_attn.out_proj.bias"] = (d, d), (d,)
            for ln in ("layer_norm1", "layer_norm2"):
                out[p + ln + ".weight"], out[p + ln + ".bias"] = (d,), (d,)
            out[p + "mlp.fc1.weight"], out[p + "mlp.fc1.bias"] = (m, d), (m,)
            out[p + "mlp.fc2.weight"], out[p + "mlp.fc2.bias"] = (d, m), (d,)
    d, p = VISION["hidden_size"], VISION["patch_size"]
    n = (VISION["image_size"] // p) ** 2 + 1
    out.update({"vision_model.embeddings.class_embedding": (d,), "vision_model.embeddings.patch_embedding.weight":
                (d, 3, p, p), "vision_model.embeddings.position_embedding.weight": (n, d),
                "vision_model.pre_layrnorm.weight": (d,), "vision_model.pre_layrnorm.bias": (d,),
                "vision_model.post_layernorm.weight": (d,), "vision_model.post_layernorm.bias": (d,),
                "visual_projection.weight": (PROJ, d)})
    t = TEXT["hidden_size"]
    out.update({"text_model.embeddings.token_embedding.weight": (TEXT["vocab_size"], t),
                "text_model.embeddings.position_embedding.weight": (TEXT["max_position_embeddings"], t),
                "text_model.final_layer_norm.weight": (t,), "text_model.final_layer_norm.bias": (t,),
                "text_projection.weight": (PROJ, t), "logit_scale": ()})
    return out


def write_checkpoint(folder: Path) -> int:
    from vlm_jax.interop import safetensors_io

    rng = np.random.default_rng(0)
    tensors = {k: (0.02 * rng.standard_normal(s)).astype(np.float32) for k, s in shapes().items()}
    folder.mkdir(parents=True)
    safetensors_io.write(folder / "model.safetensors", tensors)
    (folder / "config.json").write_text(json.dumps({"model_type": "clip", "architectures": ["CLIPModel"],
                                                    "projection_dim": PROJ, "vision_config": VISION,
                                                    "text_config": TEXT}))
    return (folder / "model.safetensors").stat().st_size


def child(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MB) of one fresh process."""
    code = ("import resource, runpy, sys, time; sys.argv = " + repr(cmd) + "; t = time.perf_counter()\n"
            "try:\n    runpy.run_module(sys.argv[0], run_name='__main__')\nexcept SystemExit as e:\n"
            "    assert not e.code, e.code\n"
            "print('WALL', time.perf_counter() - t); "
            "print('RSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    vals = dict(line.split() for line in out.stdout.splitlines() if line.startswith(("WALL", "RSS")))
    return float(vals["WALL"]), float(vals["RSS"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "convert_checkpoint.md"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        size_mb = write_checkpoint(tmp / "hf_b16") / 2**20
        baseline = ("vlm_jax.tools.convert", "--help")
        rows = {"JAX baseline (import the converter, --help)": [], "import --from hf (run dir)": [],
                "export --to hf": [], "export --to open_clip": []}
        for r in range(args.repeats):
            run = tmp / f"run{r}"
            cmds = {"JAX baseline (import the converter, --help)": None,
                    "import --from hf (run dir)": ["vlm_jax.tools.convert", "--from", "hf", "--in",
                                                   str(tmp / "hf_b16"), "--out", str(run)],
                    "export --to hf": ["vlm_jax.tools.convert", "--to", "hf", "--in", str(run), "--out",
                                       str(tmp / f"hf{r}")],
                    "export --to open_clip": ["vlm_jax.tools.convert", "--to", "open_clip", "--in", str(run),
                                              "--out", str(tmp / f"oc{r}")]}
            for name, cmd in cmds.items():
                if cmd is None:
                    code = ("import resource; import jax; jax.devices(); import vlm_jax.tools.convert; "
                            "print('WALL 0'); print('RSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024)")
                    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                                         env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
                    vals = dict(line.split() for line in out.stdout.splitlines())
                    rows[name].append((0.0, float(vals["RSS"])))
                else:
                    rows[name].append(child(cmd))
                print(name, rows[name][-1], flush=True)
    base = statistics.median(r[1] for r in rows["JAX baseline (import the converter, --help)"])
    lines = [f"# Converting a ViT-B/16-sized checkpoint\n",
             f"HF CLIPModel with ViT-B/16 shapes, float32: **{size_mb:,.0f} MB** of tensors. Each cell: median of "
             f"{args.repeats} fresh processes (min–max). Peak RSS includes the Python + JAX baseline "
             f"({base:,.0f} MB); \"over baseline\" subtracts it.\n",
             f"Command: `scripts/vlm python benchmarks/convert_checkpoint.py --repeats {args.repeats}`\n",
             "| step | wall s | peak RSS MB | over baseline MB | over baseline / checkpoint |",
             "|---|---|---|---|---|"]
    for name, vals in rows.items():
        if name.startswith("JAX"):
            continue
        wall = [v[0] for v in vals]
        rss = [v[1] for v in vals]
        over = statistics.median(rss) - base
        lines.append(f"| {name} | {statistics.median(wall):.1f} ({min(wall):.1f}–{max(wall):.1f}) | "
                     f"{statistics.median(rss):,.0f} ({min(rss):,.0f}–{max(rss):,.0f}) | {over:,.0f} | "
                     f"{over / size_mb:.2f}× |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
