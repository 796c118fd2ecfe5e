# Sourced by the study scripts: `run WORKDIR CONFIG [OVERRIDES…]` trains one run with the CLI unless WORKDIR already
# holds its results.json (an interrupted run resumes from its checkpoint).
run() {
  local workdir="$1"; shift
  [ -f "$workdir/results.json" ] || scripts/vlm python -m vlm_jax.main --workdir "$workdir" --config "$@"
}
