#!/usr/bin/env bash
# The README's test command: installs what is missing, builds everything, runs every test,
# then rebuilds the LibTorch-free part (experiment files, store) under ASan/UBSan and runs
# its tests again, since that part parses untrusted files.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
start=$(date +%s)

scripts/install-deps.sh

echo "== build (Release)"
# Benchmarks are built where they run (bench/RESULTS.md), not for the tests; the options are
# explicit because the demo command configures the same build folder without tests.
HL_BUILD_DIR="$root/build" scripts/build.sh -DHL_TESTS=ON -DHL_BENCH=OFF
echo "== tests"
(cd build && QT_QPA_PLATFORM=offscreen ctest --output-on-failure -j "$(nproc)" --timeout 900)

echo "== sanitizer build of the LibTorch-free part"
HL_BUILD_DIR="$root/build-asan" scripts/build.sh -DHL_SPEC_ONLY=ON -DHL_SANITIZE=ON -DHL_BENCH=OFF
(cd build-asan && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ctest --output-on-failure -j "$(nproc)")

echo "== all tests passed in $(( $(date +%s) - start )) s"
