#!/usr/bin/env bash
# The main job: set up, build, and run one forward pass of a preset with seeded weights.
# On a GPU machine: the medium preset, batch 8 x seq 2048, on CUDA. Otherwise: the small preset,
# batch 1 x 128 tokens, on the CPU backend. Override with: scripts/run.sh --model tiny --ids 1,2,3
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh
BIN=${BUILD_DIR:-build}/minillm
if [[ $# -gt 0 ]]; then
  exec "$BIN" forward "$@"
elif command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
  exec "$BIN" forward --model medium --batch 8 --seq 2048 --device cuda
else
  exec "$BIN" forward --model small --batch 1 --seq 128 --device cpu
fi
