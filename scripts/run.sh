#!/usr/bin/env bash
# The main job: set up, build, and run minillm, saying what each step does and how long it took.
#   scripts/run.sh --model DIR [generate options]
#       text generation from a Hugging Face model directory (config.json, safetensors, tokenizer):
#       `minillm generate --model DIR --prompt "$PROMPT"` (default prompt below), streaming the text.
#   scripts/run.sh
#       no model at hand: one forward pass of a preset with seeded random weights (the numbers it
#       prints are not from a trained model), then 16 greedy tokens generated from them.
#       GPU machine: the medium preset, batch 8 x seq 2048, on CUDA (build dir build/).
#       No GPU:      the small preset, batch 1 x 128 tokens, on the CPU backend (build dir build-cpu/,
#                    configured with -DMINILLM_CUDA=OFF so that nvcc is not run; MINILLM_CUDA=ON
#                    builds the CUDA backend anyway, into build/). CI (scripts/test.sh) always
#                    compiles CUDA when nvcc is there.
#   scripts/run.sh --model tiny --ids 1,2,3     other arguments: `minillm forward` with them
# BUILD_DIR overrides the build directory; PROMPT the text prompt.
set -euo pipefail
cd "$(dirname "$0")/.."
T0=$SECONDS
say() { printf '[run.sh %4ss] %s\n' $((SECONDS - T0)) "$*"; }

if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
  GPU=1
else
  GPU=0
fi
CUDA=${MINILLM_CUDA:-$([[ $GPU == 1 ]] && echo AUTO || echo OFF)}
if [[ $CUDA == OFF ]]; then
  BUILD_DIR=${BUILD_DIR:-build-cpu}
else
  BUILD_DIR=${BUILD_DIR:-build}
fi
export BUILD_DIR
# OpenMP threads sleep instead of spinning while they wait: on a machine shared with other jobs
# (CI, a build machine), spinning threads take the cores from the ones doing the work.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}

say "setup: dependencies (scripts/setup.sh)"
scripts/setup.sh
if [[ -f $BUILD_DIR/CMakeCache.txt ]]; then
  say "build: $BUILD_DIR/ (incremental; CUDA backend: $CUDA)"
else
  say "build: $BUILD_DIR/ (fresh: configure and compile everything on $(nproc) cores; CUDA backend: $CUDA)"
fi
scripts/build.sh -DMINILLM_CUDA="$CUDA"
BIN=$BUILD_DIR/minillm

# A model directory after --model: generate text from it.
for ((i = 1; i < $#; ++i)); do
  if [[ ${!i} == --model ]]; then
    j=$((i + 1))
    if [[ -f ${!j}/config.json ]]; then
      PROMPT=${PROMPT:-"The capital of France is"}
      say "run: minillm generate $* --prompt \"$PROMPT\" (the model directory's weights and tokenizer)"
      exec "$BIN" generate "$@" --prompt "$PROMPT"
    fi
  fi
done
if [[ $# -gt 0 ]]; then
  say "run: minillm forward $*"
  exec "$BIN" forward "$@"
fi
if [[ $GPU == 1 && $CUDA != OFF ]]; then
  ARGS=(--model medium --batch 8 --seq 2048 --device cuda)
else
  ARGS=(--model small --batch 1 --seq 128 --device cpu)
fi
"$BIN" info "${ARGS[@]:0:6}" | sed 's/^/  /'
say "run: minillm forward ${ARGS[*]} (seeded weights, seed 0: generated in memory, then one forward)"
T1=$SECONDS
"$BIN" forward "${ARGS[@]}"
say "done: the forward command took $((SECONDS - T1)) s (weight generation + engine set-up + forward)"
say "run: minillm generate ${ARGS[*]:0:2} --prompt-ids 1,2,3 --max-tokens 16 --temperature 0: seeded random weights, so the tokens are random too (scripts/run.sh --model DIR generates text from a real model)"
"$BIN" generate "${ARGS[@]:0:2}" --device "${ARGS[-1]}" --prompt-ids 1,2,3 --max-tokens 16 --temperature 0 --max-model-len 64
say "done"
