#!/usr/bin/env bash
# Issue 31's comparison: the CLIP / SigLIP baselines and the contrastive family's methods at the emoji two-tower
# budget (1,200 steps, batch 256), 3 seeds each; finished runs are skipped, an interrupted one resumes. Then the
# table (mean ± std over seeds, compute and wall time).
#   bash benchmarks/studies/contrastive_family.sh [RUN_DIR] [SWEEP_ARG]
set -euo pipefail
cd "$(dirname "$0")/../.."
dir="${1:-benchmarks/studies/contrastive_family_runs}"
scripts/vlm python -m vlm_jax.tools.sweep "experiments/sweeps/contrastive_family.py${2:+:$2}" run --dir "$dir"
scripts/vlm python benchmarks/studies/contrastive_family_table.py "$dir" > benchmarks/studies/contrastive_family.md
cat benchmarks/studies/contrastive_family.md
