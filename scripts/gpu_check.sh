#!/usr/bin/env bash
# Everything that needs the GPU, in one call: build with all cores, the C++ CPU and GPU tests,
# pytest (incl. the comparisons against torch), compute-sanitizer on small shapes, the main job,
# and the benchmarks. Logs and result JSON go to $OUT (when set, else gpu_out/); a summary table
# is printed last. The GPU machine has no network: carry .deps (scripts/setup.sh fills it here).
#   STEPS="build cpu gpu pytest sanitize main bench" (default; also: clibench ncu)
#   The seed's full benchmark grids: STEPS=bench BENCH_ARGS_moe=--full scripts/gpu_check.sh
#   (BENCH_ARGS goes to every bench script, BENCH_ARGS_<name> to bench/bench_<name>.py alone)   BENCH_ARGS="--quick"
#   BENCHES="engine moe" runs only bench/bench_{engine,moe}.py, in that order (default: every bench/bench_*.py).
#   Opt-in step "clibench": `minillm bench` on CLIBENCH_ARGS (default: medium, batch 8 x seq 2048).
#   Prebuilt binaries: leave "build" out of STEPS and point BUILD_DIR at them. GTEST_FILTER and
#   PYTEST_ADDOPTS (read by gtest and pytest) narrow the gpu and pytest steps.
#   GOLDEN=1 also regenerates tests/golden/*_golden.safetensors with torch (copied to $OUT).
#   MINILLM_COMMIT=<sha> is recorded in the result JSON instead of git's HEAD: set it when the tree
#   was copied to the GPU machine with git metadata that may not match the files.
#   Opt-in step "compare": did this tree get slower than a baseline? BASE_TREE=<dir> holds the
#   baseline's files (e.g. `git archive <rev> | tar -x -C .base`, carried along), BASE_REV=<rev> names
#   it; builds it into build-base, then the attention and MoE quick grids, `minillm bench` (medium,
#   B8 N2048) and bench/profile_decode.py (OLMoE shape, batch 1 and 64) run base, new, base, new, and
#   bench/compare_runs.py judges each grid case (mean of the two new runs) against the baseline's own
#   run-to-run noise (JSON and logs in $OUT/compare_*). COMPARE_DECODE=0 leaves out profile_decode.py.
#   DEADLINE=<seconds>: steps that would start after that many seconds are skipped (and say so);
#   STEP_TIMEOUT=<seconds> (default 1800) stops a step that hangs.
#   ARCHIVE=<file.tgz> (outside $OUT): $OUT packed into that file after every step (the results so far
#   survive a kill).
set -uo pipefail
cd "$(dirname "$0")/.."
export OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=$(command -v python3)
BUILD_DIR=${BUILD_DIR:-build-gpu}
STEPS=${STEPS:-"build cpu gpu pytest sanitize main bench"}
BENCH_ARGS=${BENCH_ARGS:-}
BENCHES=${BENCHES:-}
CLIBENCH_ARGS=${CLIBENCH_ARGS:-"--model medium --batch 8 --seq 2048"}
SAN_FILTER=${SAN_FILTER:-"*Small*:QkvRope*:CheckpointOpsCuda.*:MoECuda.DecodeRoute*:MoECuda.ForwardPairsRuns*:CudaLaunch.*:GemmCuda.*"}
# racecheck: our kernels only (cuBLAS's own kernels report hazards racecheck cannot model).
RACE_FILTER=${RACE_FILTER:-"FlashAttention.Small*:FlashAttentionSm90.Small*:MoECuda.Small*:QkvRopeCuda.*:PagedAttention.Small*:CheckpointOpsCuda.*:MoECuda.DecodeRoute*:MoECuda.ForwardPairsRuns*:GemmCuda.*Tail*"}
declare -a SUMMARY=()

DEADLINE=${DEADLINE:-0}
STEP_TIMEOUT=${STEP_TIMEOUT:-1800}
step() {  # step NAME LOGFILE COMMAND...: runs, records pass/fail and the seconds it took
  local name=$1 log=$2
  shift 2
  [[ " $STEPS " == *" ${name%%:*} "* ]] || return 0
  if ((DEADLINE > 0 && SECONDS >= DEADLINE)); then
    SUMMARY+=("$(printf '%-22s %-5s' "$name" skip) (DEADLINE=$DEADLINE s reached)")
    return 0
  fi
  echo "=== $name"
  local t0=$SECONDS
  local run=(timeout -k 10 "$STEP_TIMEOUT")
  declare -F "$1" >/dev/null && run=()  # a shell function (compare) runs as is
  "${run[@]}" "$@" 2>&1 | tee "$OUT/$log"
  local rc=${PIPESTATUS[0]}
  SUMMARY+=("$(printf '%-22s %-5s %5ss  %s' "$name" "$([[ $rc == 0 ]] && echo ok || echo FAIL)" $((SECONDS - t0)) "$log")")
  printf '%s\n' "${SUMMARY[@]}" > "$OUT/summary.txt"
  if [[ -n "${ARCHIVE:-}" ]]; then
    tar czf "$ARCHIVE.part" -C "$(dirname "$OUT")" "$(basename "$OUT")" && mv -f "$ARCHIVE.part" "$ARCHIVE"
  fi
  return "$rc"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt"
# The tokenizer's libraries, when this machine lacks them (scripts/setup.sh --sysroot, carried in .deps):
# only those the loader does not find here. A library the machine has stays its own: a carried
# libsentencepiece (with its bundled protobuf runtime) crashes on a system that has its own.
sysroot_lib=$PWD/.deps/sysroot/usr/lib/x86_64-linux-gnu
if [[ -d $sysroot_lib ]]; then
  lib_dir=$PWD/$BUILD_DIR/carried-lib
  rm -rf "$lib_dir" && mkdir -p "$lib_dir"
  known=$(ldconfig -p)
  for f in "$sysroot_lib"/*.so.*; do
    grep -q "^[[:space:]]$(basename "$f") " <<<"$known" || ln -s "$f" "$lib_dir/"
  done
  echo "carried libraries used: $(ls "$lib_dir" | tr '\n' ' ')"
  export LD_LIBRARY_PATH=${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$lib_dir
fi
[[ -f .deps/include/nlohmann/json.hpp ]] || { echo "error: .deps missing: carry .deps (run scripts/setup.sh here first)"; exit 1; }
# The server's Python packages (FastAPI, uvicorn, ...), when carried as wheels: scripts/wheels.sh here, carry .whl.
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile .whl/*.whl || echo "warning: installing .whl/*.whl failed"
fi

step build build.log env BUILD_DIR="$BUILD_DIR" PYTHON="$PY" scripts/build.sh -DCMAKE_CUDA_ARCHITECTURES=90a || { printf '%s\n' "${SUMMARY[@]}"; exit 1; }
step cpu cpu_tests.log bash -c "cd $BUILD_DIR && ctest -L cpu --output-on-failure -j16"
step gpu gpu_tests.log "$BUILD_DIR/minillm_cuda_tests" --gtest_brief=1
step pytest pytest.log env PYTHONPATH=python "$PY" -m pytest -q -rs tests/python
step sanitize:memcheck sanitizer.log compute-sanitizer --tool memcheck --leak-check full --error-exitcode 9 \
  "$BUILD_DIR/minillm_cuda_tests" --gtest_filter="$SAN_FILTER" --gtest_brief=1
step sanitize:racecheck racecheck.log compute-sanitizer --tool racecheck --error-exitcode 9 \
  "$BUILD_DIR/minillm_cuda_tests" --gtest_filter="$RACE_FILTER" --gtest_brief=1
step main main.log "$BUILD_DIR/minillm" forward --model medium --batch 8 --seq 2048 --device cuda
compare() {  # the "compare" step: baseline $BASE_TREE vs this tree, base / new / base / new
  [[ -d ${BASE_TREE:-} ]] || { echo "error: compare needs BASE_TREE=<dir with the baseline's files>"; return 2; }
  local base_rev=${BASE_REV:-base} rc=0
  cmake -S "$BASE_TREE" -B build-base -G Ninja -DMINILLM_DEPS="$PWD/.deps" -DCMAKE_CUDA_ARCHITECTURES=90a \
    -DPython_EXECUTABLE="$PY" >/dev/null && cmake --build build-base --target _minillm minillm_cli -j"$(nproc)" || return 1
  for run in base1 new1 base2 new2; do
    local pp=python cli=$BUILD_DIR/minillm sha=${MINILLM_COMMIT:-}
    [[ $run == base* ]] && { pp=$BASE_TREE/python; cli=build-base/minillm; sha=$base_rev; }
    for b in attention moe; do
      env PYTHONPATH="$pp" MINILLM_COMMIT="$sha" "$PY" "bench/bench_$b.py" --quick --out "$OUT/compare_${b}_$run.json" || rc=1
    done
    "$cli" bench --model medium --batch 8 --seq 2048 | tee "$OUT/compare_cli_$run.log" || rc=1
    # A decode step (OLMoE-1B-7B shape, batch 1 and 64): the script of this tree on either library.
    [[ ${COMPARE_DECODE:-1} == 1 ]] && { env PYTHONPATH="$pp" MINILLM_COMMIT="$sha" "$PY" bench/profile_decode.py \
      --models olmoe --batches 1,64 --out "$OUT/compare_decode_$run.json" > "$OUT/compare_decode_$run.log" 2>&1 || rc=1; }
  done
  for b in attention moe; do
    "$PY" bench/compare_runs.py --base "$OUT/compare_${b}_base1.json" "$OUT/compare_${b}_base2.json" \
      --new "$OUT/compare_${b}_new1.json" "$OUT/compare_${b}_new2.json" --out "$OUT/compare_${b}.json" || rc=1
  done
  grep -h "ms per forward" "$OUT"/compare_cli_*.log
  grep -H "forward\|LLM batch-1" "$OUT"/compare_decode_*.log 2>/dev/null
  return $rc
}
step compare compare.log compare
# shellcheck disable=SC2086
step clibench clibench.log "$BUILD_DIR/minillm" bench $CLIBENCH_ARGS
# Nsight Compute on the main kernels' headline shapes (not in the default STEPS: add "ncu").
step ncu ncu.csv env PYTHONPATH=python ncu --clock-control none --target-processes all \
  -k 'regex:flash_fwd|grouped_gemm|decode_gemm' --section SpeedOfLight --section Occupancy \
  --section ComputeWorkloadAnalysis --csv --page details "$PY" bench/profile_kernels.py
if [[ -n "${GOLDEN:-}" ]]; then
  step golden golden.log "$PY" tests/golden/make_golden.py && cp tests/golden/*_golden.safetensors "$OUT"/
fi
# In the order BENCHES names them (most wanted first, for a DEADLINE), else every bench script.
bench_files=()
if [[ -n "$BENCHES" ]]; then
  for n in $BENCHES; do bench_files+=("bench/bench_$n.py"); done
else
  bench_files=(bench/bench_*.py)
fi
for b in "${bench_files[@]}"; do
  [[ -f "$b" ]] || { echo "error: no $b"; continue; }
  n=$(basename "$b" .py)
  extra_var="BENCH_ARGS_${n#bench_}"  # per-bench arguments, e.g. BENCH_ARGS_moe=--full
  # shellcheck disable=SC2086
  step "bench:${n#bench_}" "$n.log" env PYTHONPATH=python "$PY" "$b" $BENCH_ARGS ${!extra_var:-}
done

echo
echo "=== summary ($(head -1 "$OUT/device.txt"))"
printf '%s\n' "${SUMMARY[@]}"
[[ "${SUMMARY[*]}" != *FAIL* ]]
