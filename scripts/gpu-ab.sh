#!/usr/bin/env bash
# A/B of the CUDA attention benchmark in one device call: committed trees ("base", and any
# other prepared variant) against the working tree ("new"), all built on the GPU machine and run
# interleaved, so that the columns come from the same card in the same minutes.
#
#   here:            scripts/gpu-ab.sh --prepare COMMIT [NAME]   # unpacks COMMIT into .ab/NAME
#                                                                # (default base)
#   on the device:   scripts/gpu-ab.sh [--tests] [--rounds N] [FILTER]   (carry .deps and .ab)
# FILTER is a --benchmark_filter regex (default: the fused forward); prints "NAME BENCH us=".
# --tests also builds and runs every tree's GPU tests first (HL_TEST_TIMEOUT seconds, 60) and
# leaves the trees whose tests fail or hang out of the timing.
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
rounds=2 tests=0
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds="$2"; shift 2 ;;
    --tests) tests=1; shift ;;
    *) break ;;
  esac
done
filter="${1:-BM_FusedForward/}"
targets=(--target hl_bench_cuda_attention)
[ "$tests" = 0 ] || targets+=(--target hl_test_cuda)
[ -d .ab/base ] || { echo "gpu-ab: no .ab/base (run --prepare here and carry .ab)" >&2; exit 2; }
# The working tree builds first (it unpacks the deps; seconds where gpu-kernels.sh has built it),
# then the others side by side. Every tree builds inside itself against that one deps prefix, so
# that with ccache (scripts/gpu-build.sh) each compiles only the files in which it differs.
export HL_DEPS_PREFIX=/tmp/hl-deps HL_CCACHE_BASEDIR="$root"
scripts/gpu-build.sh "${targets[@]}" >/tmp/gpu-ab-new.log 2>&1 ||
  { echo "gpu-ab: build failed (/tmp/gpu-ab-new.log)"; tail -n 30 /tmp/gpu-ab-new.log; exit 1; }
export HL_DEPS_UNPACKED=1
pids=() trees=() logs=()
for dir in .ab/*/; do
  name="$(basename "$dir")"
  ln -sfn "$root/.deps" "$dir/.deps"
  # This tree's gpu-build.sh for every tree: the prepared trees' own may predate ccache.
  HL_SOURCE_DIR="$root/.ab/$name" HL_BUILD_DIR="$root/.ab/$name/build-gpu" \
    scripts/gpu-build.sh "${targets[@]}" >"/tmp/gpu-ab-$name.log" 2>&1 &
  pids+=($!) trees+=("$name") logs+=("/tmp/gpu-ab-$name.log")
done
for i in "${!pids[@]}"; do
  wait "${pids[$i]}" || { echo "gpu-ab: build failed (${logs[$i]})"; tail -n 30 "${logs[$i]}"; exit 1; }
done
trees+=(new)
export LD_LIBRARY_PATH="$HL_DEPS_PREFIX/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
CCACHE_DIR="${HL_CCACHE_DIR:-/tmp/hl-ccache}" "$HL_DEPS_PREFIX/usr/bin/ccache" -s 2>/dev/null |
  grep -E "^ *(Hits|Misses):" | tr -s ' ' | sed 's/^/gpu-ab: ccache/'
build_of() { [ "$1" = new ] && echo "${HL_BUILD_DIR:-$root/build-gpu}" || echo "$root/.ab/$1/build-gpu"; }
if [ "$tests" = 1 ]; then
  passed=()
  for which in "${trees[@]}"; do
    timeout "${HL_TEST_TIMEOUT:-60}" "$(build_of "$which")/tests/hl_test_cuda" --gtest_brief=1 \
      >"/tmp/gpu-ab-tests-$which.log" 2>&1
    rc=$?
    echo "gpu-ab: $which tests rc=$rc $(grep -E '^\[  (PASSED|FAILED)' "/tmp/gpu-ab-tests-$which.log" | tr '\n' ' ')"
    # A failure's lines after it name the value and the bound (e.g. which gradient).
    if [ "$rc" = 0 ]; then passed+=("$which"); else grep -E -A4 "Failure" "/tmp/gpu-ab-tests-$which.log" | head -n 30; fi
  done
  trees=("${passed[@]}")
fi
results=/tmp/gpu-ab-results.txt
: >"$results"
for ((round = 1; round <= rounds; ++round)); do
  for which in "${trees[@]}"; do
    # A kernel that hangs must not take the rest of the call with it.
    timeout 180 "$(build_of "$which")/bench/hl_bench_cuda_attention" --benchmark_filter="$filter" 2>&1 |
      grep -E "^BM_" |
      awk -v w="$which" '{ for (i = 2; i <= NF; ++i) if ($i ~ /us=/) print w, $1, $i }' |
      tee -a "$results"
  done
done
# Each tree's range over the rounds, one line per benchmark and counter, trees side by side.
echo "gpu-ab: ranges over $rounds rounds"
sed -e 's|/iterations:1/manual_time||' -e 's/=/ /' "$results" |
  awk '{ v = $4; if ($4 ~ /k$/) v = substr($4, 1, length($4) - 1) * 1000
         key = $2 " " $3; if (!(key in seen)) { seen[key] = 1; order[++n] = key }
         k = key SUBSEP $1; if (!(k in lo) || v < lo[k]) lo[k] = v; if (!(k in hi) || v > hi[k]) hi[k] = v
         if (!($1 in tree)) { tree[$1] = 1; names[++m] = $1 } }
       END { for (i = 1; i <= n; ++i) { line = order[i]
               for (j = 1; j <= m; ++j) { k = order[i] SUBSEP names[j]
                 if (k in lo) line = line sprintf("  %s %.1f-%.1f", names[j], lo[k], hi[k]) }
               print line } }' 
