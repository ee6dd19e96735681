#!/usr/bin/env bash
# Configures and builds HybridLab in build/ (or $HL_BUILD_DIR). Extra arguments go to cmake.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build="${HL_BUILD_DIR:-$root/build}"
jobs="${HL_JOBS:-$(nproc)}"
# Release: no debug info, which makes the LibTorch translation units ~20% faster to compile
# (configure RelWithDebInfo by hand for a debugger).
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
cmake --build "$build" -j "$jobs"
