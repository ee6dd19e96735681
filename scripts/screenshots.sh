#!/usr/bin/env bash
# Renders each main view of the workbench to docs/screenshots/<view>.png from a runs
# database with a real demo run, under Xvfb when it is installed.
#
#   scripts/screenshots.sh [--db DB] [--build BUILD_DIR] [--out DIR] [--select IDS] [--live]
#
# --live runs the demo itself first, as a user would (`hybridlab --demo`): both conversions
# side by side into DB (default: a fresh one), with the launch view and the branch usage
# captured while they train (launch.png, usage-live.png); it needs hybridlab-cli (beside
# hybridlab or on PATH) and takes a few minutes of both cores. Without --live, DB must hold
# a finished demo; without --select the newest two runs are shown (demo and demo-ssd).
# HL_SNAPSHOT_AT="30 60" sets when (seconds after the start) the two live views are taken.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
db=""
build="$root/build"
out="$root/docs/screenshots"
select=""
live=0
while [ $# -gt 0 ]; do
  case "$1" in
    --db) db="$2"; shift 2 ;;
    --build) build="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --select) select="$2"; shift 2 ;;
    --live) live=1; shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "screenshots.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
done

app="$build/app/hybridlab"
if [ ! -x "$app" ]; then
  echo "screenshots.sh: $app is not built (configure with -DHL_GUI=ON and build 'hybridlab')" >&2
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

common=(--no-restore --size 1400x860)
if [ "$live" = 1 ]; then
  [ -n "$db" ] || db="$config/runs.sqlite"
  if [ -e "$db" ]; then
    echo "screenshots.sh: --live writes a fresh database; $db exists" >&2
    exit 2
  fi
  read -r launch_at usage_at <<< "${HL_SNAPSHOT_AT:-30 60}"
  # The demo's base model is looked for from the repository root (models/tiny-base).
  (cd "$root" && run_app --demo --db "$db" "${common[@]}" --quit-when-idle \
    --snapshot "launch:$launch_at:$out/launch.png" --snapshot "usage:$usage_at:$out/usage-live.png")
  echo "wrote $out/launch.png and $out/usage-live.png; the demo ran into $db"
else
  db="${db:-${XDG_DATA_HOME:-$HOME/.local/share}/hybridlab/runs.sqlite}"
fi
if [ ! -f "$db" ]; then
  echo "screenshots.sh: no runs database at $db (run the demo first, pass --db, or use --live)" >&2
  exit 2
fi

views=(curves usage eval compare experiment)
[ "$live" = 1 ] || views+=(launch)
for view in "${views[@]}"; do
  args=(--db "$db" --tab "$view" "${common[@]}" --screenshot "$out/$view.png")
  [ -n "$select" ] && args+=(--select "$select")
  case "$view" in
    curves) args+=(--log-y) ;;  # the two stages' losses differ by orders of magnitude
    experiment) args+=(--experiment "$root/experiments/demo-ssd.toml") ;;
  esac
  run_app "${args[@]}"
  echo "wrote $out/$view.png"
done
