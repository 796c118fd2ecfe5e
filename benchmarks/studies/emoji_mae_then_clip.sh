#!/usr/bin/env bash
# Issue 18, finding 1: MAE pretraining then contrastive training vs contrastive from scratch at the same total
# compute. MAE 4.6k steps costs what 1.2k CLIP steps cost (8.13 vs 31.16 GFLOP per step, analytic), so
#   A  CLIP from scratch, 2.4k steps
#   B  MAE 4.6k steps, then CLIP 1.2k steps starting from its image tower (init_from)
#   C  CLIP from scratch, 1.2k steps (B's contrastive budget alone)
# all with the linear probe and kNN beside zero-shot; a finished run is skipped, an interrupted one resumes.
# About 20 min on 2 cores (A and B alone: 16 min).
#   bash benchmarks/studies/emoji_mae_then_clip.sh [RUN_DIR] [SEED] [ARMS]    (ARMS default "A B C")
set -euo pipefail
cd "$(dirname "$0")/../.."
dir="${1:-runs/mae_then_clip}"
seed="${2:-0}"
arms="${3:-A B C}"
probe="--config.evals.probe_sets=['emoji','fashion_mnist']"
source benchmarks/studies/run_lib.sh
s="--config.seed=$seed"
if [[ $arms == *B* ]]; then
  run "$dir/mae" experiments/emoji_mae.py:steps=4600 "$s"
  run "$dir/mae_clip" experiments/emoji_two_tower.py:steps=1200 "$probe" "$s" \
    "--config.init_from.workdir=$dir/mae" "--config.init_from.include=^img/"
fi
[[ $arms == *A* ]] && run "$dir/clip_2400" experiments/emoji_two_tower.py:steps=2400 "$probe" "$s"
[[ $arms == *C* ]] && run "$dir/clip_1200" experiments/emoji_two_tower.py:steps=1200 "$probe" "$s"
named=()
[[ $arms == *A* ]] && named+=("CLIP 2.4k (A)=$dir/clip_2400")
[[ $arms == *B* ]] && named+=("MAE 4.6k → CLIP 1.2k (B)=$dir/mae_clip")
[[ $arms == *C* ]] && named+=("CLIP 1.2k (C)=$dir/clip_1200")
[[ $arms == *B* ]] && named+=("MAE 4.6k=$dir/mae")
scripts/vlm python -m vlm_jax.evals.report "${named[@]}" | tee "benchmarks/studies/emoji_mae_then_clip_seed$seed.md"
