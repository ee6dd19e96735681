#!/usr/bin/env bash
# Builds core, kernels, CLI, tests and benchmarks on a GPU machine that has CUDA and a
# PyTorch install but no Qt and no package registry, then (with --test) runs the tests.
# The Debian packages come from .deps/debs (made by scripts/fetch-gpu-deps.sh) and are
# unpacked into a prefix of their own, never into /.
#
#   scripts/gpu-build.sh [--test] [--target T]... [-- EXTRA_CMAKE_ARGS...]
set -euo pipefail
# HL_SOURCE_DIR: another tree to build with this script (scripts/gpu-ab.sh's trees).
root="${HL_SOURCE_DIR:-$(cd "$(dirname "$0")/.." && pwd)}"
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
# HL_DEPS_UNPACKED: the caller unpacked them already (builds sharing one prefix).
if [ -z "${HL_DEPS_UNPACKED:-}" ]; then
  for deb in .deps/debs/*.deb; do dpkg -x "$deb" "$prefix"; done
fi
libdir="$prefix/usr/lib/x86_64-linux-gnu"
export LD_LIBRARY_PATH="$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# ccache where the carried one runs: the trees of scripts/gpu-ab.sh, which differ in a file or
# two, then compile only those. Paths under HL_CCACHE_BASEDIR (the outermost tree) count relative
# to the build directory, so trees that build inside themselves share their entries.
launcher=()
if "$prefix/usr/bin/ccache" --version >/dev/null 2>&1; then
  export CCACHE_DIR="${HL_CCACHE_DIR:-/tmp/hl-ccache}" CCACHE_BASEDIR="${HL_CCACHE_BASEDIR:-$root}"
  export CCACHE_NOHASHDIR=1 CCACHE_SLOPPINESS=pch_defines,time_macros,include_file_mtime,include_file_ctime
  launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER="$prefix/usr/bin/ccache"
    -DCMAKE_CUDA_COMPILER_LAUNCHER="$prefix/usr/bin/ccache")
fi
export HL_FORTUNES_DIR="$prefix/usr/share/games/fortunes"
export CUDACXX="${CUDACXX:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}"
torch_cmake="$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')"

cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DHL_GUI=OFF -DHL_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90a \
  -DCMAKE_PREFIX_PATH="$torch_cmake;$prefix/usr;$libdir/cmake" \
  -DSQLite3_INCLUDE_DIR="$prefix/usr/include" -DSQLite3_LIBRARY="$libdir/libsqlite3.so" \
  "${launcher[@]}" "${extra[@]}"
cmake --build "$build" -j "$(nproc)" "${targets[@]}"

if [ "$run_tests" = 1 ]; then
  (cd "$build" && ctest --output-on-failure -j 4 --timeout 900)
fi
