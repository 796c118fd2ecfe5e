#!/usr/bin/env bash
# Issue 28: the default CLIP run (1.2k steps) from webdataset shards vs from the TFDS data, 3 seeds each (6 runs;
# finished runs are skipped, an interrupted one resumes), then mean ± std and Welch's test of shards − tfds.
#   bash benchmarks/studies/emoji_shards_vs_tfds.sh [RUN_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
dir="${1:-runs/shards_vs_tfds}"
sweep=experiments/sweeps/emoji_shards_vs_tfds.py
out=benchmarks/studies/emoji_shards_vs_tfds
[ -f data_cache/emoji_shards/00000.tar ] || \
  scripts/vlm python -m vlm_jax.tools.make_shards --dataset emoji --format wds --out data_cache/emoji_shards --shard_size 1000
scripts/vlm python -m vlm_jax.tools.sweep "$sweep" run --dir "$dir"
scripts/vlm python -m vlm_jax.tools.sweep "$sweep" collect --dir "$dir" --csv "$out.csv"
m=evals/zeroshot/emoji/cross
scripts/vlm python -m vlm_jax.tools.sweep_compare --csv "$out.csv" --x samples_seen --diff shards,tfds \
  --metric "1-$m/nonflag/top@1/model=1 − cross-style non-flag top-1" --metric "1-$m/all/top@1/model=1 − cross-style top-1" \
  --metric "1-$m/all/i2t_R@1/model=1 − image→text R@1" --xlabel "samples seen" --group source \
  --md "$out.md" --json "$out.json"
