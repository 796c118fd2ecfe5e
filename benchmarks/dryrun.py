"""TPU dry runs of the shipped paper-scale configs: fits, per-chip memory, FLOPs/step, predicted step time.

Run: scripts/vlm python benchmarks/dryrun.py [--only NAME]  → prints and writes benchmarks/dryrun.md
(needs the tpu-aot extra: `bash scripts/setup.sh test`). Each row compiles the real train step.
"""
import argparse
import json
import sys
from pathlib import Path

import jax

from vlm_jax.config import apply_overrides, load_config
from vlm_jax.tools.dryrun import dry_run, format_report
from vlm_jax.train.trainer import finalize_config

ROWS = [  # (name, config, topology, slices, overrides)
    ("CLIP B/16", "experiments/two_tower_scale.py:variant=B/16,loss=clip,batch=32768", "v5p-128", 1, []),
    ("CLIP B/16", "experiments/two_tower_scale.py:variant=B/16,loss=clip,batch=32768", "v5e-256", 1, []),
    ("SigLIP So400m/14", "experiments/two_tower_scale.py:variant=So400m/14,loss=siglip,batch=32768", "v5p-128", 1, []),
    ("SigLIP So400m/14", "experiments/two_tower_scale.py:variant=So400m/14,loss=siglip,batch=32768", "v5e-256", 1, []),
    ("SigLIP So400m/14, fsdp=128 (divides width 1152)",
     "experiments/two_tower_scale.py:variant=So400m/14,loss=siglip,batch=32768,fsdp=128", "v5e-256", 1, []),
    ("SigLIP So400m/14, fsdp=128, full remat",
     "experiments/two_tower_scale.py:variant=So400m/14,loss=siglip,batch=32768,fsdp=128,remat=full", "v5e-256", 1, []),
    ("SigLIP So400m/14, fsdp=512 on one axis (divides few dims)",
     "experiments/two_tower_scale.py:variant=So400m/14,loss=siglip,batch=32768", "v5p-1024", 1, []),
    ("SigLIP So400m/14, fsdp=512 split 16 × 32 over two dims (fsdp_dims=2d)",
     "experiments/two_tower_scale.py:variant=So400m/14,loss=siglip,batch=32768", "v5p-1024", 1, ["fsdp_dims=2d"]),
    ("SigLIP So400m/14, no remat", "experiments/two_tower_scale.py:variant=So400m/14,loss=siglip,batch=32768,"
     "remat=none", "v5p-128", 1, []),
    ("CLIPPO B/16", "experiments/clippo_scale.py:variant=B/16,batch=10240", "v5e-256", 1, []),
    ("CLIPPO B/16", "experiments/clippo_scale.py:variant=B/16,batch=10240", "v5p-128", 1, []),
    ("CLIP B/16, 2 slices", "experiments/two_tower_scale.py:variant=B/16,loss=clip,batch=65536", "v5e-256", 2, []),
    ("CoCa-Base (B/18 @288, 12+12 decoder)", "experiments/captioner_scale.py:model=coca_base", "v5p-128", 1, []),
    ("CoCa-Base (B/18 @288, 12+12 decoder)", "experiments/captioner_scale.py:model=coca_base", "v5p-512", 1, []),
    ("CoCa-Base, remat=full", "experiments/captioner_scale.py:model=coca_base,remat=full", "v5p-128", 1, []),
    ("CapPa B/16 (6-layer decoder)", "experiments/captioner_scale.py:model=cappa_b16", "v5p-128", 1, []),
    ("CapPa B/16 (6-layer decoder)", "experiments/captioner_scale.py:model=cappa_b16", "v5e-256", 1, []),
    ("PrefixLM, PaliGemma-like (So400m/14 + 2B decoder)", "experiments/captioner_scale.py:model=paligemma_like",
     "v5p-128", 1, []),
    ("PrefixLM, PaliGemma-like (So400m/14 + 2B decoder)", "experiments/captioner_scale.py:model=paligemma_like",
     "v5e-256", 1, []),
    ("PaLI-3-like (G/14 @224 + 3B enc-dec), prompt 64 + answer 64", "experiments/pali_scale.py:model=pali3_like",
     "v5p-128", 1, []),
    ("PaLI-3-like (G/14 @224 + 3B enc-dec), prompt 64 + answer 64", "experiments/pali_scale.py:model=pali3_like",
     "v5p-256", 1, []),
    ("PaliGemma-like prompted (So400m/14 + 2B), prompt 64 + answer 64",
     "experiments/pali_scale.py:model=paligemma_like", "v5p-128", 1, []),
    # NaFlex (issue 30): SigLIP 2 So400m/16, native-aspect images at a sequence budget, beside fixed 256 px squares
    # (256 patches: equal tokens to budget 256); the 16 × 16 learned position table is resized per image
    ("SigLIP So400m/16 @256 px, fixed resolution (256 patches)",
     "experiments/two_tower_scale.py:variant=So400m/16,loss=siglip,batch=32768,res=256", "v5p-128", 1, []),
    ("SigLIP 2 So400m/16 NaFlex, budget 256",
     "experiments/two_tower_scale.py:variant=So400m/16,loss=siglip,batch=32768,res=256,naflex=256", "v5p-128", 1,
     []),
    ("SigLIP 2 So400m/16 NaFlex, budget 1024",
     "experiments/two_tower_scale.py:variant=So400m/16,loss=siglip,batch=32768,res=256,naflex=1024", "v5p-128", 1,
     []),
    ("SigLIP 2 So400m/16 NaFlex, budget 1024, full remat",
     "experiments/two_tower_scale.py:variant=So400m/16,loss=siglip,batch=32768,res=256,naflex=1024,remat=full",
     "v5p-128", 1, []),
    ("SigLIP 2 So400m/16 NaFlex, budget 1024",
     "experiments/two_tower_scale.py:variant=So400m/16,loss=siglip,batch=32768,res=256,naflex=1024", "v5p-256", 1,
     []),
    ("SigLIP 2 So400m/16 NaFlex, budget 1024, full remat",
     "experiments/two_tower_scale.py:variant=So400m/16,loss=siglip,batch=32768,res=256,naflex=1024,remat=full",
     "v5p-256", 1, []),
    # frozen-backbone VLMs (issue 32): the vision encoder and the LM frozen (no gradient), the bridge trained
    ("Flamingo-3B-like (frozen H/14 + 1.4B-sized LM, gated xattn every block, 64 latents)",
     "experiments/frozen_lm_scale.py:model=flamingo3b_like", "v5p-128", 1, []),
    ("BLIP-2 stage 1 (frozen ViT-g/14, BERT-base-sized Q-Former)", "experiments/frozen_lm_scale.py:model=blip2_stage1_g",
     "v5p-32", 1, []),
    ("BLIP-2 stage 2, OPT-2.7B-like (frozen ViT-g/14 and LM, Q-Former trained)",
     "experiments/frozen_lm_scale.py:model=blip2_opt2.7b_like", "v5p-32", 1, []),
    # the shard-trained recipes (docs/shards.md "Recipes"), at the papers' batch sizes
    ("CLIP B/32, DataComp-medium recipe", "experiments/clip_datacomp.py:scale=medium,variant=B/32,data=synthetic",
     "v5e-64", 1, []),
    ("CLIP B/32, DataComp-medium recipe", "experiments/clip_datacomp.py:scale=medium,variant=B/32,data=synthetic",
     "v5p-32", 1, []),
    ("CLIP B/16, DataComp-medium recipe", "experiments/clip_datacomp.py:scale=medium,variant=B/16,data=synthetic",
     "v5e-64", 1, []),
    ("SigLIP B/16, WebLI-like recipe", "experiments/siglip_webli.py:data=synthetic", "v5p-128", 1, []),
    ("SigLIP B/16, WebLI-like recipe", "experiments/siglip_webli.py:data=synthetic", "v5e-256", 1, []),
]
# Host CPU cores per chip the shard input pipeline needs (rows whose name has "recipe"): samples/s per chip at the
# predicted step time ÷ samples/s one host core decodes, from benchmarks/shards_throughput.md (224 px webdataset
# pipeline, 0 workers: 588 samples/s on one core, 2026-12-05 after the tokenizer fix; the 640×480 figure swaps in
# the larger JPEG's decode time: 1/588 − 1/1486 + 1/590 s per sample → 368/s).
# The derivation is in docs/shards.md "Recipes".
CORE_RATES = (("224 px JPEG (9 KB)", 588.0), ("640×480 JPEG (21 KB)", 368.0))
FOOTER = "## Host CPU cores per chip for the input pipeline (recipe rows)"


def main() -> None:
    """Runs the rows, prints each report, writes the markdown table and JSONL."""
    jax.config.update("jax_platforms", "cpu")
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", default=None, help="run rows whose name contains this")
    args = parser.parse_args()
    out = Path(__file__).with_suffix(".md")
    lines = ["# TPU dry runs (compiled on a 2-core CPU machine with libtpu; no TPU used)", "",
             "`python -m vlm_jax.tools.dryrun` per row; model FLOPs from the jaxpr (matmuls, no remat recompute); "
             "step time predicted at 40% MFU.", "",
             "| model | topology | batch (per chip) | fits | peak / HBM per chip | params + opt per chip "
             "| model FLOPs/step | step at 40% MFU | samples/s | compile |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    records = []
    for name, cfg, topo, slices, overrides in ROWS:
        if args.only and args.only not in name:
            continue
        config = apply_overrides(finalize_config(load_config(cfg)), overrides)
        r = dry_run(config, topo, slices)
        print(f"{name}: {cfg}\n{format_report(r)}\n", flush=True)
        gib = lambda x: "?" if x is None else f"{x / 2 ** 30:.1f}"  # noqa: E731
        lines.append(
            f"| {name} | {r.topology} | {r.global_batch} ({r.batch_per_chip:g}) | {'yes' if r.fits else '**no**'} "
            f"| {gib(r.required_bytes)} / {gib(r.hbm_bytes)} GiB | {(r.params_bytes + r.opt_state_bytes) / 2**20:.0f} MiB "
            f"| {r.model_flops_total:.2e} | {r.step_seconds_at_mfu:.2f} s | {r.samples_per_second_at_mfu:,.0f} "
            f"| {r.compile_seconds:.0f} s |")
        records.append(dict(name=name, config=cfg, topology=r.topology, fits=r.fits, required=r.required_bytes,
                            hbm=r.hbm_bytes, model_flops=r.model_flops_total, step_s=r.step_seconds_at_mfu,
                            chips=r.num_devices, global_batch=r.global_batch))
    if args.only and out.exists():  # merge: the new rows replace those of the same model and topology
        lines, records = merge(out, lines, records)
    lines += cores_table(records)
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    print("\n".join(lines))


def cores_table(records: list[dict]) -> list[str]:
    """The footer: per recipe row, samples/s per chip at the predicted step time and the host cores per chip that
    rate needs at each CORE_RATES decode rate."""
    rows = [r for r in records if "recipe" in r["name"] and r.get("chips")]
    if not rows:
        return []
    out = ["", FOOTER, "",
           "samples/s per chip = global batch / predicted step (40% MFU) / chips; cores per chip = that / samples/s "
           "per host core (" + ", ".join(f"{k}: {v:.0f}" for k, v in CORE_RATES) + "; derived in docs/shards.md "
           "\"Recipes\" from benchmarks/shards_throughput.md).", "",
           "| recipe | topology | samples/s per chip | " + " | ".join(f"cores per chip, {k}" for k, _ in CORE_RATES)
           + " |", "|---|---|---:|" + "---:|" * len(CORE_RATES)]
    for r in rows:
        per_chip = r["global_batch"] / r["step_s"] / r["chips"]
        out.append(f"| {r['name']} | {r['topology']} | {per_chip:,.0f} | "
                   + " | ".join(f"{per_chip / rate:.1f}" for _, rate in CORE_RATES) + " |")
    return out


def merge(out: Path, lines: list[str], records: list[dict]) -> tuple[list[str], list[dict]]:
    """The existing table and JSONL with rows of the same (name, topology) replaced by the new ones, in ROWS
    order."""
    key = lambda line: tuple(c.strip() for c in line.split("|")[1:3])  # noqa: E731
    head = [ln for ln in lines if not ln.startswith("| ") or ln.startswith("| model ")]
    new_rows = {key(ln): ln for ln in lines if ln.startswith("| ") and not ln.startswith("| model ")}
    main_table = out.read_text().split(FOOTER)[0].splitlines()  # the footer is rebuilt from the records
    old_rows = {key(ln): ln for ln in main_table if ln.startswith("| ") and not ln.startswith("| model ")}
    rows = {**old_rows, **new_rows}
    order = {(name, topo): i for i, (name, _, topo, _, _) in enumerate(ROWS)}
    place = lambda name, topo: order.get((name, topo.split(" × ")[0]), len(order))  # noqa: E731  (multi-slice rows)
    table = sorted(rows.items(), key=lambda kv: place(*kv[0]))
    old = [json.loads(ln) for ln in out.with_suffix(".jsonl").read_text().splitlines() if ln.strip()] \
        if out.with_suffix(".jsonl").exists() else []
    fresh = {(r["name"], r["topology"]) for r in records}
    recs = [r for r in old if (r["name"], r["topology"]) not in fresh] + records
    recs.sort(key=lambda r: place(r["name"], r["topology"]))
    return head + [ln for _, ln in table], recs


if __name__ == "__main__":
    sys.exit(main())
