#!/usr/bin/env bash
# Sets up, builds and runs the test suite: the C++ tests (ctest, label cpu) and pytest (the GPU
# tests are skipped without a GPU; scripts/gpu_check.sh runs them on the GPU machine).
# In CI (CI=true) or with --sanitize, also: the CPU tests built with clang, ASan and UBSan
# (build-san/), and every libFuzzer target for FUZZ_SECONDS (default 60) each (scripts/fuzz.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
# OpenMP threads sleep while they wait instead of spinning: ctest runs tests in parallel, each with
# its own OpenMP threads, and on 2 cores the spinning ones stall the others (CPU tests: 43 s -> 2 s
# on a shared 2-core machine).
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
scripts/setup.sh
scripts/build.sh
BUILD_DIR=${BUILD_DIR:-build}
echo "== C++ tests"
(cd "$BUILD_DIR" && ctest -L cpu --output-on-failure -j"$(nproc)")
echo "== Python tests"
PYTHONPATH=python python3 -m pytest -q tests/python
if [[ "${CI:-}" == "true" || "${1:-}" == "--sanitize" ]]; then
  echo "== C++ tests under ASan + UBSan (clang, build-san)"
  scripts/fuzz.sh --build-only
  (cd "${SAN_BUILD_DIR:-build-san}" && ctest -L cpu --output-on-failure -j"$(nproc)")
  echo "== Fuzzing (${FUZZ_SECONDS:-60} s per target)"
  scripts/fuzz.sh "${FUZZ_SECONDS:-60}"
fi
