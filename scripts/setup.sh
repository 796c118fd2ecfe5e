#!/usr/bin/env bash
# Idempotent setup: Debian data/font packages, a venv in .venv with pinned deps, vlm_jax installed editable.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

# Debian packages holding the real data: emoji font (train style), Fashion-MNIST, Unifont (CLIPPO),
# tcmalloc (faster XLA:CPU allocations). Installed only when missing.
need=()
[ -f /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf ] || need+=(fonts-noto-color-emoji)
[ -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ] || need+=(dataset-fashion-mnist)
[ -f /usr/share/unifont/unifont.hex ] || need+=(unifont)
ls /usr/lib/*/libtcmalloc_minimal.so.4 >/dev/null 2>&1 || need+=(libtcmalloc-minimal4)
command -v npm >/dev/null 2>&1 || need+=(npm)  # `npm pack` fetches the extra emoji image sets
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  echo "[setup] apt-get install ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# venv with exact pins; reinstalled only when the requirement files change.
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.vlm_jax_reqs
want=$(cat requirements.txt requirements-test.txt setup.py | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] pip install -e .[test]"
  .venv/bin/pip install -q --disable-pip-version-check -r requirements.txt -r requirements-test.txt
  .venv/bin/pip install -q --disable-pip-version-check --no-deps -e .
  echo "$want" > "$stamp"
fi
