#!/usr/bin/env bash
# The README's main command: installs what is missing, builds, and starts the workbench on
# its built-in demo; without a display it runs the same demo headless with the CLI.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

scripts/install-deps.sh
HL_BUILD_DIR="$root/build" scripts/build.sh -DHL_TESTS=OFF -DHL_BENCH=OFF

if [ -n "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ] && [ -x build/app/hybridlab ]; then
  exec build/app/hybridlab --demo "$@"
fi
echo "no display: running the demo headless (hybridlab-cli demo)"
exec build/app/hybridlab-cli demo "$@"
