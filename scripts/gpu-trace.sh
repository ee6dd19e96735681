#!/usr/bin/env bash
# The step's kernels block by block on the GPU machine: builds the CUDA benchmark with per-block
# timestamps (cmake -DHL_BLOCK_TRACE=ON, in a build folder of its own), runs the fused
# forward+backward benchmarks matching FILTER, and summarises each one's last step
# (scripts/trace_summary.py). The raw traces come back under $OUT. Needs .deps (carried).
#
#   scripts/gpu-trace.sh [FILTER]   (default: B1 N16K, the 1.0 ms target's shape)
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
filter="${1:-BM_FusedForwardBackward/B:1/N:16384/}"
out="${OUT:-$root/out}"
mkdir -p "$out"
build="${HL_TRACE_BUILD_DIR:-$root/build-gpu-trace}"
HL_BUILD_DIR="$build" scripts/gpu-build.sh --target hl_bench_cuda_attention -- -DHL_BLOCK_TRACE=ON \
  >"$out/trace-build.log" 2>&1 || { grep -E "error|undefined" "$out/trace-build.log" | head -n 20; exit 1; }
export LD_LIBRARY_PATH="${HL_DEPS_PREFIX:-/tmp/hl-deps}/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
HL_TRACE_OUT="$out" "$build/bench/hl_bench_cuda_attention" --benchmark_filter="$filter" 2>&1 |
  grep -E "manual_time|rror"
python3 scripts/trace_summary.py "$out"/trace_*.txt
