#!/usr/bin/env bash
# Sets up, builds and runs the test suite: the C++ tests (ctest, label cpu) and pytest (the GPU
# tests are skipped without a GPU; scripts/gpu_check.sh runs them on the GPU machine).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh
BUILD_DIR=${BUILD_DIR:-build}
echo "== C++ tests"
(cd "$BUILD_DIR" && ctest -L cpu --output-on-failure -j"$(nproc)")
echo "== Python tests"
PYTHONPATH=python python3 -m pytest -q tests/python
