#!/usr/bin/env bash
# Benchmark-only venv for benchmarks/vs_open_clip.py: torch, torchvision and open_clip at exact pins, in .bench-venv
# (git-ignored; never used by training or the tests). torch 2.14.1 is the build pip finds on this kind of machine.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .bench-venv/bin/python ] || "${PYTHON:-python3}" -m venv .bench-venv
.bench-venv/bin/pip install -q --disable-pip-version-check -r benchmarks/requirements-open-clip.txt
