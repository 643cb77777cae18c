#!/usr/bin/env bash
# Fuzzing: builds the libFuzzer targets fuzz/fuzz_<name>.cpp with clang + ASan + UBSan into
# build-san/ and runs each for N seconds from its committed seed corpus fuzz/corpus/<name>/ (with
# the dictionary fuzz/<name>.dict when there is one). Exits 1 on any finding (crash, sanitizer
# report, leak, timeout, uncaught exception), 0 otherwise; prints executions and findings per target.
#   scripts/fuzz.sh [seconds] [name...]   run (default 60 s each, all targets; up to FUZZ_JOBS at once,
#                                         default the number of cores)
#   scripts/fuzz.sh --build-only          configure and build everything in build-san/ (the CPU tests
#                                         too: scripts/test.sh runs them there under the sanitizers)
# Inputs found to add coverage go to build-san/fuzz/corpus/<name>/ (the seed corpus is left as is);
# a failing input is saved as build-san/fuzz/artifacts/<name>/crash-<sha1> (or timeout-/leak-/oom-)
# and can be replayed with build-san/fuzz_<name> <file>.
# A new target: add fuzz/fuzz_<name>.cpp (LLVMFuzzerTestOneInput) and fuzz/corpus/<name>/ seeds;
# CMake (MINILLM_FUZZ) and this script pick it up by the file name.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${SAN_BUILD_DIR:-build-san}

scripts/setup.sh --sanitize >/dev/null
configure() {
  if [[ ! -f "$BUILD_DIR/CMakeCache.txt" ]]; then
    GEN=(); command -v ninja >/dev/null && GEN=(-G Ninja)
    CC=clang CXX=clang++ cmake -S . -B "$BUILD_DIR" "${GEN[@]}" -DMINILLM_CUDA=OFF -DMINILLM_PYTHON=OFF \
      -DMINILLM_FUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g" >/dev/null
  fi
}
configure
if [[ "${1:-}" == "--build-only" ]]; then
  cmake --build "$BUILD_DIR" -j"$(nproc)"
  exit 0
fi

SECS=${1:-60}
shift || true
names=("$@")
if ((${#names[@]} == 0)); then
  for f in fuzz/fuzz_*.cpp; do n=$(basename "$f" .cpp); names+=("${n#fuzz_}"); done
fi
cmake --build "$BUILD_DIR" -j"$(nproc)" --target "${names[@]/#/fuzz_}"

JOBS=${FUZZ_JOBS:-$(nproc)}
mkdir -p "$BUILD_DIR/fuzz"
run_one() {  # name -> log in $BUILD_DIR/fuzz/<name>.log, exit status of libFuzzer
  local n=$1 corpus="$BUILD_DIR/fuzz/corpus/$1" art="$BUILD_DIR/fuzz/artifacts/$1/"
  mkdir -p "$corpus" "$art"
  local dict=(); [[ -f fuzz/$n.dict ]] && dict=(-dict="fuzz/$n.dict")
  ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1} "$BUILD_DIR/fuzz_$n" -max_total_time="$SECS" -timeout=10 \
    -rss_limit_mb=2048 -max_len=16384 -print_final_stats=1 -artifact_prefix="$art" "${dict[@]}" \
    "$corpus" "fuzz/corpus/$n" >"$BUILD_DIR/fuzz/$n.log" 2>&1
}
declare -A pid_of
status=0
for n in "${names[@]}"; do
  [[ -f fuzz/fuzz_$n.cpp ]] || { echo "fuzz: no target fuzz/fuzz_$n.cpp"; exit 2; }
  while (($(jobs -rp | wc -l) >= JOBS)); do sleep 1; done
  echo "fuzz: fuzz_$n for ${SECS} s"
  run_one "$n" &
  pid_of[$n]=$!
done
for n in "${names[@]}"; do
  rc=0; wait "${pid_of[$n]}" || rc=$?
  log="$BUILD_DIR/fuzz/$n.log"
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 || true)
  corpus_n=$(find "$BUILD_DIR/fuzz/corpus/$n" -type f | wc -l)
  if ((rc == 0)); then
    echo "fuzz: fuzz_$n: $execs executions in $SECS s, $cov, $corpus_n new corpus inputs, no findings"
  else
    status=1
    echo "fuzz: fuzz_$n: FINDING (exit $rc) after $execs executions; log $log, input in $BUILD_DIR/fuzz/artifacts/$n/"
    grep -m5 -E 'ERROR|SUMMARY|runtime error|deadly|Test unit written' "$log" | sed 's/^/  /' || true
  fi
done
exit $status
