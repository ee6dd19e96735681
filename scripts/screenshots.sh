#!/usr/bin/env bash
# Renders each main view of the workbench to docs/screenshots/<view>.png from a runs
# database (by default the one the demo writes), under Xvfb when it is installed.
#
#   scripts/screenshots.sh [--db DB] [--build BUILD_DIR] [--out DIR] [--select IDS]
#
# Use a database with a real demo run (`hybridlab --demo` or `hybridlab-cli demo`); without
# --select the newest two runs are shown (the demo's lolcats and lolcats+ssd).
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
db="${XDG_DATA_HOME:-$HOME/.local/share}/hybridlab/runs.sqlite"
build="$root/build"
out="$root/docs/screenshots"
select=""
while [ $# -gt 0 ]; do
  case "$1" in
    --db) db="$2"; shift 2 ;;
    --build) build="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --select) select="$2"; shift 2 ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "screenshots.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
done

app="$build/app/hybridlab"
if [ ! -x "$app" ]; then
  echo "screenshots.sh: $app is not built (configure with -DHL_GUI=ON and build 'hybridlab')" >&2
  exit 2
fi
if [ ! -f "$db" ]; then
  echo "screenshots.sh: no runs database at $db (run the demo first, or pass --db)" >&2
  exit 2
fi
mkdir -p "$out"

# Settings of this rendering stay out of the user's configuration.
config="$(mktemp -d)"
trap 'rm -rf "$config"' EXIT
export XDG_CONFIG_HOME="$config"

run_app() {
  if command -v xvfb-run > /dev/null; then
    xvfb-run -a -s "-screen 0 1600x1000x24" "$app" "$@"
  else
    QT_QPA_PLATFORM=offscreen "$app" "$@"
  fi
}

for view in curves usage eval compare experiment launch; do
  args=(--db "$db" --tab "$view" --no-restore --size 1400x860 --screenshot "$out/$view.png")
  [ -n "$select" ] && args+=(--select "$select")
  run_app "${args[@]}"
  echo "wrote $out/$view.png"
done
