#!/usr/bin/env bash
# Run on a machine with Debian's package registry: downloads the Debian -dev packages
# that core, kernels, CLI and tests need, and ccache, into .deps/debs (ignored by git), so
# that scripts/gpu-build.sh can build on a GPU machine that has no package registry.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
mkdir -p "$root/.deps/debs"
cd "$root/.deps/debs"
apt-get download \
  libtomlplusplus-dev libtomlplusplus3 nlohmann-json3-dev libsqlite3-dev libsqlite3-0 \
  libgtest-dev libgmock-dev libbenchmark-dev libbenchmark1debian \
  fortunes-min fortunes ccache libhiredis0.14
ls -1 "$root/.deps/debs"
