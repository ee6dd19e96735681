#!/usr/bin/env bash
# Per-instruction profile of one kernel of the CUDA benchmark on the GPU machine: builds the
# benchmark, runs ncu's full set on a few launches of the kernels matching KERNEL_REGEX in the
# benchmarks matching BENCH_FILTER, and prints the details page (throughput, warp states),
# the SASS lines with the most stall samples and each code region's stall reasons and
# instruction mix (scripts/sass_summary.py, which also reads a SASS table that came back).
# Needs .deps (carried) for gpu-build.sh.
#
#   scripts/gpu-ncu.sh KERNEL_REGEX BENCH_FILTER [LAUNCHES]
# Extra ncu arguments come from $NCU_ARGS (e.g. "--cache-control none" to keep L2 warm). The
# details page, SASS table and log come back packed as KERNEL_REGEX's name .tar.gz.
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
[ $# -ge 2 ] || { echo "usage: scripts/gpu-ncu.sh KERNEL_REGEX BENCH_FILTER [LAUNCHES]" >&2; exit 2; }
kernel="$1" filter="$2" launches="${3:-3}"
out="${OUT:-$root/out}"
mkdir -p "$out"
build="${HL_BUILD_DIR:-$root/build-gpu}"
name="$(echo "$kernel" | tr -c 'A-Za-z0-9_\n' '_')"
# Always (incremental, seconds when up to date): a benchmark left by an earlier call may have
# been built from another tree (session 16 profiled a reverted variant that way).
scripts/gpu-build.sh --target hl_bench_cuda_attention >"$out/$name-build.log" 2>&1 ||
  { tail -n 30 "$out/$name-build.log"; exit 1; }
rep="$out/$name"
timeout 400 ncu ${NCU_ARGS:-} --set full --import-source no -k "regex:$kernel" -c "$launches" -f -o "$rep" \
  "$build/bench/hl_bench_cuda_attention" --benchmark_filter="$filter" >"$out/$name-run.log" 2>&1 ||
  { echo "ncu rc=$?"; tail -n 20 "$out/$name-run.log"; }
ncu --import "$rep.ncu-rep" --page details --print-units base >"$out/$name-details.txt" 2>&1
grep -E "^  [A-Za-z]|Duration|Throughput|Registers|Occupancy|Stall|Warp Cycles|Issued|Elapsed" \
  "$out/$name-details.txt" | head -n 80
ncu --import "$rep.ncu-rep" --page source --csv --print-source sass >"$out/$name-sass.csv" 2>&1
# Top stall lines, then the kernel's regions with their stall reasons and instruction mix
# ($SASS_PER: divide the counts by this, e.g. tiles x warps of the profiled launch).
# ($SASS_BARS: the kernel's mbarrier layout as OFFSET:NAME,..., see scripts/sass_summary.py.)
python3 scripts/sass_summary.py "$out/$name-sass.csv" ${SASS_PER:+--per "$SASS_PER"} \
  ${SASS_BARS:+--bars "$SASS_BARS"}
# At most 8 files come back from a device call: the details page, the SASS table, the run's and
# the build's logs go back as one archive (one file per profiled kernel, so that several fit in a
# call), and the report itself (large) only with NCU_KEEP_REP=1.
(cd "$out" && tar czf "$name.tar.gz" "$name-details.txt" "$name-sass.csv" "$name-run.log" \
  "$name-build.log" && rm -f "$name-details.txt" "$name-sass.csv" "$name-run.log" "$name-build.log")
[ "${NCU_KEEP_REP:-0}" = 1 ] || rm -f "$rep.ncu-rep"
