#!/usr/bin/env bash
# Builds core, kernels, CLI, tests and benchmarks on a GPU machine that has CUDA and a
# PyTorch install but no Qt and no package registry, then (with --test) runs the tests.
# The Debian packages come from .deps/debs (made by scripts/fetch-gpu-deps.sh) and are
# unpacked into a prefix of their own, never into /.
#
#   scripts/gpu-build.sh [--test] [--target T]... [-- EXTRA_CMAKE_ARGS...]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
prefix="${HL_DEPS_PREFIX:-/tmp/hl-deps}"
build="${HL_BUILD_DIR:-$root/build-gpu}"
run_tests=0
targets=()
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --test) run_tests=1 ;;
    --target) targets+=(--target "$2"); shift ;;
    --) shift; extra=("$@"); break ;;
    *) echo "gpu-build: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

ls .deps/debs/*.deb >/dev/null 2>&1 || { echo "gpu-build: no .deps/debs (run scripts/fetch-gpu-deps.sh first and carry .deps)" >&2; exit 2; }
mkdir -p "$prefix"
for deb in .deps/debs/*.deb; do dpkg -x "$deb" "$prefix"; done
libdir="$prefix/usr/lib/x86_64-linux-gnu"
export LD_LIBRARY_PATH="$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export HL_FORTUNES_DIR="$prefix/usr/share/games/fortunes"
export CUDACXX="${CUDACXX:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}"
torch_cmake="$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')"

cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DHL_GUI=OFF -DHL_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90a \
  -DCMAKE_PREFIX_PATH="$torch_cmake;$prefix/usr;$libdir/cmake" \
  -DSQLite3_INCLUDE_DIR="$prefix/usr/include" -DSQLite3_LIBRARY="$libdir/libsqlite3.so" \
  "${extra[@]}"
cmake --build "$build" -j "$(nproc)" "${targets[@]}"

if [ "$run_tests" = 1 ]; then
  (cd "$build" && ctest --output-on-failure -j 4 --timeout 900)
fi
