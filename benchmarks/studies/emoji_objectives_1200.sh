#!/usr/bin/env bash
# Issue 18: every objective of the masked / alignment family at the README's 1.2k-step budget on the same data,
# towers and schedule (MAE: 4.6k steps, the compute of 1.2k CLIP steps), with zero-shot, retrieval, linear probe,
# kNN, reconstruction error, held-out ITM and masked-token accuracy. Reuses the runs of the two findings' scripts
# (run them first); a finished run is skipped. About 45 min on 2 cores.
#   bash benchmarks/studies/emoji_objectives_1200.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
dir=runs/objectives_1200
probe="--config.evals.probe_sets=['emoji','fashion_mnist']"
source benchmarks/studies/run_lib.sh
run "$dir/unicl" experiments/emoji_two_tower.py:loss=unicl,steps=1200 "$probe"
run "$dir/mlm" experiments/emoji_flava.py:parts=mlm
run "$dir/itm" experiments/emoji_flava.py:parts=itm
run "$dir/flava" experiments/emoji_flava.py
run "$dir/lit_mae_image" experiments/emoji_lit.py:tower=image,init=runs/mae_then_clip/mae
run "$dir/lit_minilm" experiments/emoji_lit.py
# ITM against random as well as the hardest negatives (the evaluator gained the random ones after these runs)
for r in itm flava; do
  [ -f "$dir/$r/evals_step1200.json" ] || scripts/vlm python -m vlm_jax.tools.evaluate --workdir "$dir/$r" >/dev/null
done
scripts/vlm python -m vlm_jax.evals.report "CLIP=runs/mae_then_clip/clip_1200" "UniCL=$dir/unicl" \
  "SigLIP=runs/siglip2_vs_siglip/siglip" "SigLIP 2=runs/siglip2_vs_siglip/siglip2" "MAE (4.6k)=runs/mae_then_clip/mae" \
  "MAE→CLIP=runs/mae_then_clip/mae_clip" "LiT (MAE image)=$dir/lit_mae_image" "LiT (MiniLM text)=$dir/lit_minilm" \
  "ITM+CLIP=$dir/itm/evals_step1200.json" "MLM=$dir/mlm" "FLAVA=$dir/flava/evals_step1200.json" | tee benchmarks/studies/emoji_objectives_1200.md
