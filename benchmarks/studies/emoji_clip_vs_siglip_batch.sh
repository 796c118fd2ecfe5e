#!/usr/bin/env bash
# The second study of issue 16: CLIP vs SigLIP at batch 32 … 1024 and equal samples seen, 3 seeds each (36 runs of
# the xs model, one after another; finished runs are skipped, an interrupted one resumes), then mean ± std per
# point, Welch's test of SigLIP − CLIP, a table and a plot. About 45 min on 2 cores.
#   bash benchmarks/studies/emoji_clip_vs_siglip_batch.sh [RUN_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
dir="${1:-runs/batch}"
sweep=experiments/sweeps/emoji_clip_vs_siglip_batch.py
out=benchmarks/studies/emoji_clip_vs_siglip_batch
scripts/vlm python -m vlm_jax.tools.sweep "$sweep" run --dir "$dir"
scripts/vlm python -m vlm_jax.tools.sweep "$sweep" collect --dir "$dir" --csv "$out.csv"
m=evals/zeroshot/emoji/cross/nonflag
scripts/vlm python -m vlm_jax.tools.sweep_compare --csv "$out.csv" --x batch --group loss --diff siglip,clip \
  --metric "1-$m/top@1/model=1 − cross-style non-flag top-1" --metric "1-$m/top@5/model=1 − top-5" \
  --metric "1-$m/i2t_R@1/model=1 − image→text R@1" --xlabel "batch size (196,608 samples seen)" \
  --out "$out.png" --md "$out.md" --json "$out.json"
