#!/usr/bin/env bash
# Everything that needs the GPU, in one call: build with all cores, the C++ CPU and GPU tests,
# pytest (incl. the comparisons against torch), compute-sanitizer on small shapes, the main job,
# and the benchmarks. Logs and result JSON go to $OUT (when set, else gpu_out/); a summary table
# is printed last. The GPU machine has no network: carry .deps (scripts/setup.sh fills it here).
#   STEPS="build cpu gpu pytest sanitize main bench" (default; also: clibench ncu)
#   The seed's full benchmark grids: STEPS=bench BENCH_ARGS_moe=--full scripts/gpu_check.sh
#   (BENCH_ARGS goes to every bench script, BENCH_ARGS_<name> to bench/bench_<name>.py alone)   BENCH_ARGS="--quick"
#   BENCHES="engine moe" runs only bench/bench_{engine,moe}.py (default: every bench/bench_*.py).
#   Opt-in step "clibench": `minillm bench` on CLIBENCH_ARGS (default: medium, batch 8 x seq 2048).
#   Prebuilt binaries: leave "build" out of STEPS and point BUILD_DIR at them. GTEST_FILTER and
#   PYTEST_ADDOPTS (read by gtest and pytest) narrow the gpu and pytest steps.
#   GOLDEN=1 also regenerates tests/golden/*_golden.safetensors with torch (copied to $OUT).
#   MINILLM_COMMIT=<sha> is recorded in the result JSON instead of git's HEAD: set it when the tree
#   was copied to the GPU machine with git metadata that may not match the files.
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
SAN_FILTER=${SAN_FILTER:-"*Small*:QkvRope*:CheckpointOpsCuda.*"}
# racecheck: our kernels only (cuBLAS's own kernels report hazards racecheck cannot model).
RACE_FILTER=${RACE_FILTER:-"FlashAttention.Small*:FlashAttentionSm90.Small*:MoECuda.Small*:QkvRopeCuda.*:PagedAttention.Small*:CheckpointOpsCuda.*"}
declare -a SUMMARY=()

step() {  # step NAME LOGFILE COMMAND...: runs, records pass/fail and the seconds it took
  local name=$1 log=$2
  shift 2
  [[ " $STEPS " == *" ${name%%:*} "* ]] || return 0
  echo "=== $name"
  local t0=$SECONDS
  "$@" 2>&1 | tee "$OUT/$log"
  local rc=${PIPESTATUS[0]}
  SUMMARY+=("$(printf '%-22s %-5s %5ss  %s' "$name" "$([[ $rc == 0 ]] && echo ok || echo FAIL)" $((SECONDS - t0)) "$log")")
  return "$rc"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt"
# The tokenizer's libraries, when this machine lacks them (scripts/setup.sh --sysroot, carried in .deps).
sysroot_lib=$PWD/.deps/sysroot/usr/lib/x86_64-linux-gnu
[[ -d $sysroot_lib ]] && export LD_LIBRARY_PATH=${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$sysroot_lib
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
# shellcheck disable=SC2086
step clibench clibench.log "$BUILD_DIR/minillm" bench $CLIBENCH_ARGS
# Nsight Compute on the main kernels' headline shapes (not in the default STEPS: add "ncu").
step ncu ncu.csv env PYTHONPATH=python ncu --clock-control none --target-processes all \
  -k 'regex:flash_fwd|grouped_gemm|decode_gemm' --section SpeedOfLight --section Occupancy \
  --section ComputeWorkloadAnalysis --csv --page details "$PY" bench/profile_kernels.py
if [[ -n "${GOLDEN:-}" ]]; then
  step golden golden.log "$PY" tests/golden/make_golden.py && cp tests/golden/*_golden.safetensors "$OUT"/
fi
for b in bench/bench_*.py; do
  [[ -f "$b" ]] || continue
  n=$(basename "$b" .py)
  [[ -z "$BENCHES" || " $BENCHES " == *" ${n#bench_} "* ]] || continue
  extra_var="BENCH_ARGS_${n#bench_}"  # per-bench arguments, e.g. BENCH_ARGS_moe=--full
  # shellcheck disable=SC2086
  step "bench:${n#bench_}" "$n.log" env PYTHONPATH=python "$PY" "$b" $BENCH_ARGS ${!extra_var:-}
done

echo
echo "=== summary ($(head -1 "$OUT/device.txt"))"
printf '%s\n' "${SUMMARY[@]}"
[[ "${SUMMARY[*]}" != *FAIL* ]]
