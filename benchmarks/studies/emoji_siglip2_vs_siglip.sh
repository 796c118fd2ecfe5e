#!/usr/bin/env bash
# Issue 18, finding 2: the SigLIP 2 recipe's auxiliary losses (LocCa decoder from the start; SILC self-distillation
# and TIPS masked prediction in the last 20%) vs plain SigLIP, on the same model, data and 1.2k steps (the same
# samples seen; SigLIP 2 spends more compute per step, which results.json reports). Zero-shot, retrieval, the
# linear probe, kNN and the dense probe (per-patch emoji group on composed scenes). A finished run is skipped.
# About 20 min on 2 cores.   bash benchmarks/studies/emoji_siglip2_vs_siglip.sh [RUN_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
dir="${1:-runs/siglip2_vs_siglip}"
dense="--config.evals.dense_sets=['emoji']"
source benchmarks/studies/run_lib.sh
run "$dir/siglip" experiments/emoji_siglip2.py:recipe=siglip "$dense"
run "$dir/siglip2" experiments/emoji_siglip2.py "$dense"
scripts/vlm python -m vlm_jax.evals.report "SigLIP=$dir/siglip" "SigLIP 2 recipe=$dir/siglip2" \
  | tee benchmarks/studies/emoji_siglip2_vs_siglip.md
