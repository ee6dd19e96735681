#!/usr/bin/env bash
# A/B of the CUDA attention benchmark in one device call: committed trees ("base", and any
# other prepared variant) against the working tree ("new"), all built on the GPU machine and run
# interleaved, so that the columns come from the same card in the same minutes.
#
#   here:            scripts/gpu-ab.sh --prepare COMMIT [NAME]   # unpacks COMMIT into .ab/NAME
#                                                                # (default base)
#   on the device:   scripts/gpu-ab.sh [--rounds N] [FILTER]   (carry .deps and .ab)
# FILTER is a --benchmark_filter regex (default: the fused forward); prints "NAME BENCH us=".
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
if [ "${1:-}" = "--prepare" ]; then
  [ $# -ge 2 ] || { echo "gpu-ab: --prepare needs a commit" >&2; exit 2; }
  name="${3:-base}"
  [ "$name" != new ] || { echo "gpu-ab: \"new\" names the working tree" >&2; exit 2; }
  rm -rf ".ab/$name" && mkdir -p ".ab/$name" && git archive "$2" | tar -x -C ".ab/$name"
  echo "gpu-ab: .ab/$name is $(git rev-parse --short "$2")"
  exit 0
fi
rounds=2
if [ "${1:-}" = "--rounds" ]; then rounds="$2"; shift 2; fi
filter="${1:-BM_FusedForward/}"
[ -d .ab/base ] || { echo "gpu-ab: no .ab/base (run --prepare here and carry .ab)" >&2; exit 2; }
# The trees build side by side: each build's time goes mostly to a few long translation units.
scripts/gpu-build.sh --target hl_bench_cuda_attention >/tmp/gpu-ab-new.log 2>&1 &
pids=($!) trees=() logs=(/tmp/gpu-ab-new.log)
for dir in .ab/*/; do
  name="$(basename "$dir")"
  ln -sfn "$root/.deps" "$dir/.deps"
  (cd "$dir" && HL_BUILD_DIR="/tmp/gpu-ab-$name" HL_DEPS_PREFIX="/tmp/hl-deps-$name" \
    scripts/gpu-build.sh --target hl_bench_cuda_attention >"/tmp/gpu-ab-$name.log" 2>&1) &
  pids+=($!) trees+=("$name") logs+=("/tmp/gpu-ab-$name.log")
done
for i in "${!pids[@]}"; do
  wait "${pids[$i]}" || { echo "gpu-ab: build failed (${logs[$i]})"; tail -n 30 "${logs[$i]}"; exit 1; }
done
trees+=(new)
export LD_LIBRARY_PATH="/tmp/hl-deps/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
for ((round = 1; round <= rounds; ++round)); do
  for which in "${trees[@]}"; do
    bench="/tmp/gpu-ab-$which/bench/hl_bench_cuda_attention"
    [ "$which" = new ] && bench="${HL_BUILD_DIR:-$root/build-gpu}/bench/hl_bench_cuda_attention"
    "$bench" --benchmark_filter="$filter" 2>&1 | grep -E "^BM_" |
      awk -v w="$which" '{ for (i = 2; i <= NF; ++i) if ($i ~ /us=/) print w, $1, $i }'
  done
done
