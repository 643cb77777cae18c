#!/usr/bin/env bash
# Configures and builds minillm into build/ (CUDA when nvcc is found; all cores).
# Extra CMake arguments pass through: scripts/build.sh -DMINILLM_SANITIZE=ON
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
PY=${PYTHON:-$(command -v python3)}
GEN=()
command -v ninja >/dev/null && GEN=(-G Ninja)
if [[ ! -f "$BUILD_DIR/CMakeCache.txt" ]]; then
  cmake -S . -B "$BUILD_DIR" "${GEN[@]}" -DPython_EXECUTABLE="$PY" "$@" >/dev/null
else
  cmake -S . -B "$BUILD_DIR" "$@" >/dev/null
fi
cmake --build "$BUILD_DIR" -j"$(nproc)"
