#!/usr/bin/env bash
# The mini scaling study (issue 16): 4 CLIP sizes × 3 budgets on emoji, run here one after another (finished runs
# are skipped, an interrupted one resumes), collected into one CSV and fitted. About 45 min on 2 cores.
#   bash benchmarks/studies/emoji_clip_scaling.sh [RUN_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
dir="${1:-runs/scaling}"
sweep=experiments/sweeps/emoji_clip_scaling.py
out=benchmarks/studies
scripts/vlm python -m vlm_jax.tools.sweep "$sweep" run --dir "$dir"
scripts/vlm python -m vlm_jax.tools.sweep "$sweep" collect --dir "$dir" --csv "$out/emoji_clip_scaling.csv"
for metric in "top@1" "i2t_R@1"; do
  name=${metric//@/}
  scripts/vlm python -m vlm_jax.tools.scaling_fit --csv "$out/emoji_clip_scaling.csv" --compute train_gmacs \
    --error "1-evals/zeroshot/emoji/cross/nonflag/$metric/model" --bins 4 --bootstrap 500 \
    --xlabel "training compute C (forward GMACs × samples seen)" \
    --ylabel "1 − cross-style non-flag $metric" \
    --out "$out/emoji_clip_scaling_${name}.png" --json "$out/emoji_clip_scaling_${name}.json"
  scripts/vlm python -m vlm_jax.tools.scaling_fit --csv "$out/emoji_clip_scaling.csv" --compute train_gmacs \
    --error "1-evals/zeroshot/emoji/cross/nonflag/$metric/model" --group size --bins 0 \
    --xlabel "training compute C (forward GMACs × samples seen)" --ylabel "1 − cross-style non-flag $metric" \
    --out "$out/emoji_clip_scaling_${name}_by_size.png" --json "$out/emoji_clip_scaling_${name}_by_size.json"
done
