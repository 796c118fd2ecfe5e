#!/usr/bin/env bash
# Issue 30's comparison: SigLIP on Tux Paint at fixed resolution vs NaFlex (one budget, and budgets drawn per batch),
# 3 seeds each (9 runs of ~7 min here, one after another; finished runs are skipped, an interrupted one resumes),
# then the table of held-out zero-shot / retrieval at every evaluated budget.
#   bash benchmarks/studies/tuxpaint_naflex_vs_fixed.sh [RUN_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
dir="${1:-runs/naflex}"
scripts/vlm python -m vlm_jax.tools.sweep experiments/sweeps/tuxpaint_naflex_vs_fixed.py run --dir "$dir"
scripts/vlm python benchmarks/studies/tuxpaint_naflex_table.py "$dir" > benchmarks/studies/tuxpaint_naflex_vs_fixed.md
cat benchmarks/studies/tuxpaint_naflex_vs_fixed.md
