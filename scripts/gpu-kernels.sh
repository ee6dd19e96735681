#!/usr/bin/env bash
# One device call for the fused CUDA attention kernels: build, GPU tests, compute-sanitizer
# (memcheck, racecheck) on small shapes, the C++ benchmark and the FlexAttention/SDPA
# baselines on the same card. Logs go to $OUT (or ./out): summary.txt, tests.xml (with the
# errors the tests record) and the JSON results as files, the raw logs packed into logs.tar.gz;
# a short summary is printed last.
#
#   scripts/gpu-kernels.sh [--no-sanitize] [--no-bench] [--no-flex] [--skip-sdpa-64k]
#                          [--bench-filter REGEX] [--profile REGEX]
# --profile times every kernel of the benchmarks matching REGEX under ncu (one metric,
# clocks left alone) and prints the mean per kernel name.
# Needs .deps (carried) for scripts/gpu-build.sh. HL_TEST_TIMEOUT: seconds for the GPU tests (180).
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
out="${OUT:-$root/out}"
mkdir -p "$out"
sanitize=1 bench=1 flex=1 filter="." flex_args=() profile=""
while [ $# -gt 0 ]; do
  case "$1" in
    --no-sanitize) sanitize=0 ;;
    --no-bench) bench=0 ;;
    --no-flex) flex=0 ;;
    --skip-sdpa-64k) flex_args+=(--skip-sdpa-64k) ;;  # SDPA causal at 64K alone takes minutes
    --bench-filter) filter="$2"; shift ;;
    --profile) profile="$2"; shift ;;
    *) echo "gpu-kernels: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
summary="$out/summary.txt"
: >"$summary"
# Only a few files come back from a device call: on exit the raw logs go into one archive and
# summary.txt and the JSON results stay beside it.
pack_logs() {
  local logs=(build.log env.txt tests.log bench.txt flex.txt profile.csv profile.err sanitize-memcheck.log
    sanitize-racecheck.log)
  # ls names the logs this run made (and fails on the others: its status is not looked at).
  (cd "$out" && { ls "${logs[@]}" >logs.list 2>/dev/null || true; } &&
    tar czf logs.tar.gz -T logs.list && rm -f "${logs[@]}" logs.list)
}
trap pack_logs EXIT
note() { echo "$*" | tee -a "$summary"; }
t0=$(date +%s)
stamp() { echo "[$(($(date +%s) - t0)) s]"; }

{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
  nvcc --version | tail -n 2
  python3 -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name())'
} >"$out/env.txt" 2>&1
note "device: $(head -n 2 "$out/env.txt" | tail -n 1)"

if ! scripts/gpu-build.sh --target hl_test_cuda --target hl_bench_cuda_attention >"$out/build.log" 2>&1; then
  note "$(stamp) BUILD FAILED"
  grep -E "error|Error" "$out/build.log" | head -n 40
  tail -n 20 "$out/build.log"
  exit 1
fi
note "$(stamp) build ok"
build="${HL_BUILD_DIR:-$root/build-gpu}"

# The tests take seconds; a kernel that hangs must not eat the device time of the whole call.
timeout "${HL_TEST_TIMEOUT:-180}" "$build/tests/hl_test_cuda" --gtest_brief=1 --gtest_output="xml:$out/tests.xml" \
  >"$out/tests.log" 2>&1
rc=$?
note "$(stamp) tests rc=$rc: $(grep -E '^\[  (PASSED|FAILED)|tests? ran' "$out/tests.log" | tr '\n' ' ')"
grep -E "Failure|Expected|Which is|rel_err|error|trace|FAILED" "$out/tests.log" | head -n 40
if [ "$rc" = 124 ]; then
  note "tests timed out (a hung kernel?): nothing else runs"
  exit 1
fi

if [ "$sanitize" = 1 ]; then
  export PYTORCH_NO_CUDA_MEMORY_CACHING=1  # so that memcheck sees each buffer's real bounds
  for tool in memcheck racecheck; do
    timeout 200 compute-sanitizer --tool "$tool" --error-exitcode 9 \
      "$build/tests/hl_test_cuda" --gtest_filter='*Sanitizer*' >"$out/sanitize-$tool.log" 2>&1
    rc=$?
    note "$(stamp) $tool rc=$rc: $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|hazard' "$out/sanitize-$tool.log" | head -n 3 | tr '\n' ' ')"
  done
  unset PYTORCH_NO_CUDA_MEMORY_CACHING
fi

if [ "$bench" = 1 ]; then
  timeout 420 "$build/bench/hl_bench_cuda_attention" --benchmark_filter="$filter" \
    --benchmark_out="$out/bench.json" --benchmark_out_format=json >"$out/bench.txt" 2>&1
  note "$(stamp) bench rc=$?"
  grep -E "^BM_" "$out/bench.txt" | awk '{ printf "%-44s", $1; for (i = 2; i <= NF; ++i) if ($i ~ /(us|GB\/s|TFLOP\/s)=/) printf " %s", $i; print "" }' | tee -a "$summary"
fi

if [ -n "$profile" ]; then
  timeout 300 ncu --clock-control none --metrics gpu__time_duration.sum --csv \
    "$build/bench/hl_bench_cuda_attention" --benchmark_filter="$profile" >"$out/profile.csv" 2>"$out/profile.err"
  note "$(stamp) profile rc=$?"
  python3 - "$out/profile.csv" <<'PY' | tee -a "$summary"
import csv, sys, collections, re
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 10]
head = rows[0]
name, value, unit = head.index("Kernel Name"), head.index("Metric Value"), head.index("Metric Unit")
to_us = {"ns": 1e-3, "nsecond": 1e-3, "us": 1.0, "usecond": 1.0, "ms": 1e3, "msecond": 1e3}
times = collections.defaultdict(list)
for r in rows[1:]:
    if r[unit] in to_us:
        found = re.findall(r"(\w+(?:<[^()]*>)?)\(", r[name])
        times[(found[0] if found else r[name])[:60]].append(float(r[value].replace(",", "")) * to_us[r[unit]])
for k, v in sorted(times.items(), key=lambda kv: -sum(kv[1])):
    print(f"{sum(v) / len(v):10.1f} us  x{len(v):<4d} {k}")
PY
fi

if [ "$flex" = 1 ]; then
  PYTHONUNBUFFERED=1 timeout 480 python3 bench/flex_baseline.py "${flex_args[@]}" --json "$out/flex.json" >"$out/flex.txt" 2>&1
  note "$(stamp) flex rc=$?"
  grep -E "^(flex|sdpa)" "$out/flex.txt" | tee -a "$summary"
  tail -n 3 "$out/flex.txt" | grep -iE "error|Traceback" && tail -n 15 "$out/flex.txt"
fi
note "$(stamp) done"
