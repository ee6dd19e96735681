#!/usr/bin/env bash
# A/B of the CUDA attention benchmark in one device call: a committed tree ("base") against the
# working tree ("new"), both built on the GPU machine and run interleaved, so that the two
# columns come from the same card in the same minutes.
#
#   here:            scripts/gpu-ab.sh --prepare COMMIT   # unpacks COMMIT into .ab/base
#   on the device:   scripts/gpu-ab.sh [--rounds N] [FILTER]   (carry .deps and .ab)
# FILTER is a --benchmark_filter regex (default: the fused forward); prints "base|new NAME us=".
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
if [ "${1:-}" = "--prepare" ]; then
  [ $# -eq 2 ] || { echo "gpu-ab: --prepare needs a commit" >&2; exit 2; }
  rm -rf .ab/base && mkdir -p .ab/base && git archive "$2" | tar -x -C .ab/base
  echo "gpu-ab: .ab/base is $(git rev-parse --short "$2")"
  exit 0
fi
rounds=2
if [ "${1:-}" = "--rounds" ]; then rounds="$2"; shift 2; fi
filter="${1:-BM_FusedForward/}"
[ -d .ab/base ] || { echo "gpu-ab: no .ab/base (run --prepare here and carry .ab)" >&2; exit 2; }
ln -sfn "$root/.deps" .ab/base/.deps
scripts/gpu-build.sh --target hl_bench_cuda_attention >/tmp/gpu-ab-new.log 2>&1 ||
  { echo "gpu-ab: build of the working tree failed"; tail -n 30 /tmp/gpu-ab-new.log; exit 1; }
(cd .ab/base && HL_BUILD_DIR=/tmp/gpu-ab-base scripts/gpu-build.sh --target hl_bench_cuda_attention \
  >/tmp/gpu-ab-base.log 2>&1) ||
  { echo "gpu-ab: build of .ab/base failed"; tail -n 30 /tmp/gpu-ab-base.log; exit 1; }
export LD_LIBRARY_PATH="/tmp/hl-deps/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
for ((round = 1; round <= rounds; ++round)); do
  for which in base new; do
    bench=/tmp/gpu-ab-base/bench/hl_bench_cuda_attention
    [ "$which" = new ] && bench="${HL_BUILD_DIR:-$root/build-gpu}/bench/hl_bench_cuda_attention"
    "$bench" --benchmark_filter="$filter" 2>&1 | grep -E "^BM_" |
      awk -v w="$which" '{ for (i = 2; i <= NF; ++i) if ($i ~ /us=/) print w, $1, $i }'
  done
done
