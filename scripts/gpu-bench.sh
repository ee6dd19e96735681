#!/usr/bin/env bash
# One device call for the model-level GPU benchmarks: attention-transfer training tokens/s
# (bench/transfer_bench.cpp) and decode tokens/s and memory against context length
# (bench/decode_bench.cpp), both on a Llama-3.2-1B shape with random weights, plus a quick
# CUDA run of the tiny pretrain preset. Logs go to $OUT (or ./out); a summary is printed.
#
#   scripts/gpu-bench.sh [--no-pretrain] [--asan-io]
# --asan-io also builds the io tests (malformed-file corpus) under ASan/UBSan with the many
# cores there and runs them. Needs .deps (carried) for scripts/gpu-build.sh.
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
out="${OUT:-$root/out}"
mkdir -p "$out"
pretrain=1 asan_io=0
for arg in "$@"; do
  case "$arg" in
    --no-pretrain) pretrain=0 ;;
    --asan-io) asan_io=1 ;;
    *) echo "gpu-bench: unknown argument $arg" >&2; exit 2 ;;
  esac
done
build="${HL_BUILD_DIR:-$root/build-gpu}"
t0=$(date +%s)
stamp() { echo "[$(($(date +%s) - t0)) s]"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/env.txt"

targets=(--target hl_bench_transfer --target hybridlab-cli)
[ -f bench/decode_bench.cpp ] && targets+=(--target hl_bench_decode)
if ! scripts/gpu-build.sh "${targets[@]}" >"$out/build.log" 2>&1; then
  echo "$(stamp) BUILD FAILED"; grep -E "error" "$out/build.log" | head -n 30; exit 1
fi
echo "$(stamp) build ok"
export LD_LIBRARY_PATH="/tmp/hl-deps/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export HL_FORTUNES_DIR=/tmp/hl-deps/usr/share/games/fortunes

HL_BENCH_DEVICE=cuda timeout 240 "$build/bench/hl_bench_transfer" --benchmark_filter='1b:1' \
  --benchmark_out="$out/transfer.json" --benchmark_out_format=json 2>&1 | tee "$out/transfer.txt" | grep -E "^BM_|rror"
echo "$(stamp) transfer bench done"
if [ -x "$build/bench/hl_bench_decode" ]; then
  HL_BENCH_DEVICE=cuda timeout 240 "$build/bench/hl_bench_decode" \
    --benchmark_out="$out/decode.json" --benchmark_out_format=json 2>&1 | tee "$out/decode.txt" | grep -E "^BM_|rror"
  echo "$(stamp) decode bench done"
fi
if [ "$pretrain" = 1 ]; then
  timeout 120 "$build/app/hybridlab-cli" pretrain --preset tiny --device cuda --out "$out/tiny-cuda" \
    --progress none 2>&1 | tail -n 8
  echo "$(stamp) pretrain done"
fi
if [ "$asan_io" = 1 ]; then
  HL_BUILD_DIR="$root/build-asan-io" scripts/gpu-build.sh --target hl_test_io \
    >"$out/asan-build.log" 2>&1 -- -DHL_SANITIZE=ON -DHL_CUDA=OFF -DHL_BENCH=OFF \
    || { echo "$(stamp) ASAN BUILD FAILED"; grep -E "error" "$out/asan-build.log" | head -n 20; }
  if [ -x "$root/build-asan-io/tests/hl_test_io" ]; then
    (cd "$root/build-asan-io/tests" && ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 \
      UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 timeout 300 ./hl_test_io --gtest_brief=1) \
      >"$out/asan-io.log" 2>&1
    echo "$(stamp) asan io tests rc=$?: $(grep -E '^\[  (PASSED|FAILED)' "$out/asan-io.log" | tr '\n' ' ')"
    grep -E "ERROR: AddressSanitizer|runtime error" "$out/asan-io.log" | head -n 5
  fi
fi
