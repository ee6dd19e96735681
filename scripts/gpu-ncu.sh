#!/usr/bin/env bash
# Per-instruction profile of one kernel of the CUDA benchmark on the GPU machine: builds the
# benchmark, runs ncu's full set on a few launches of the kernels matching KERNEL_REGEX in the
# benchmarks matching BENCH_FILTER, and prints the details page (throughput, warp states)
# and the SASS lines with the most stall samples. Needs .deps (carried) for gpu-build.sh.
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
if [ ! -x "$build/bench/hl_bench_cuda_attention" ]; then
  scripts/gpu-build.sh --target hl_bench_cuda_attention >"$out/ncu-build.log" 2>&1 ||
    { tail -n 30 "$out/ncu-build.log"; exit 1; }
fi
name="$(echo "$kernel" | tr -c 'A-Za-z0-9_\n' '_')"
rep="$out/$name"
timeout 400 ncu ${NCU_ARGS:-} --set full --import-source no -k "regex:$kernel" -c "$launches" -f -o "$rep" \
  "$build/bench/hl_bench_cuda_attention" --benchmark_filter="$filter" >"$out/$name-run.log" 2>&1 ||
  { echo "ncu rc=$?"; tail -n 20 "$out/$name-run.log"; }
ncu --import "$rep.ncu-rep" --page details --print-units base >"$out/$name-details.txt" 2>&1
grep -E "^  [A-Za-z]|Duration|Throughput|Registers|Occupancy|Stall|Warp Cycles|Issued|Elapsed" \
  "$out/$name-details.txt" | head -n 80
ncu --import "$rep.ncu-rep" --page source --csv --print-source sass >"$out/$name-sass.csv" 2>&1
python3 - "$out/$name-sass.csv" <<'PY'
import csv, re, sys
rows = list(csv.reader(open(sys.argv[1])))
head = next((i for i, r in enumerate(rows) if "Source" in r and "Address" in r), None)
if head is None:
    print("no source table"); sys.exit(0)
h = rows[head]
src = h.index("Source")
samp = next((i for i, c in enumerate(h) if c.startswith("Warp Stall Sampling (All")), None)
if samp is None:
    print("columns:", h); sys.exit(0)
# The table repeats per profiled launch, each behind a "Kernel Name" row: read the first.
end = next((i for i in range(head + 1, len(rows)) if rows[i][:1] == ["Kernel Name"]), len(rows))
body = [r for r in rows[head + 1:end] if len(r) == len(h)]
total = sum(float(r[samp] or 0) for r in body) or 1.0
print(f"{len(body)} SASS lines, {total:.0f} stall samples; top lines, each with the mbarrier")
print("wait at its branch target or the instruction before it (a wait loop's branch names it):")
addr = h.index("Address")
at = {id(r): i for i, r in enumerate(body)}
by_addr = {r[addr]: r for r in body}
for r in sorted(body, key=lambda r: -float(r[samp] or 0))[:40]:
    target = re.search(r"BRA (0x[0-9a-f]+)", r[src])
    note = by_addr.get(target.group(1), [""] * len(h))[src] if target else ""
    if "TRYWAIT" not in note:
        note = body[at[id(r)] - 1][src] if at[id(r)] > 0 else ""
    print(f"{100 * float(r[samp] or 0) / total:5.1f}%  {r[addr]}  {r[src][:70]:70s} | {note.strip()[:60]}")
PY
# At most 8 files come back from a device call: the details page, the SASS table and the run's
# log go back as one archive, and the report itself (large) only with NCU_KEEP_REP=1.
(cd "$out" && tar czf "$name.tar.gz" "$name-details.txt" "$name-sass.csv" "$name-run.log" &&
  rm -f "$name-details.txt" "$name-sass.csv" "$name-run.log")
[ "${NCU_KEEP_REP:-0}" = 1 ] || rm -f "$rep.ncu-rep"
