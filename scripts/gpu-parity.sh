#!/usr/bin/env bash
# On the GPU machine: builds, writes tiny transformers models with scripts/hf_parity.py,
# and runs our parity tests against them (logits and tokenizer ids), in one go.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
scripts/gpu-build.sh --target hl_test_model
out="${HL_PARITY_DIR:-/tmp/hl-parity}"
mkdir -p "$out"
python3 scripts/hf_parity.py "$out"
export LD_LIBRARY_PATH="${HL_DEPS_PREFIX:-/tmp/hl-deps}/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"
HL_PARITY_DIR="$out" "${HL_BUILD_DIR:-build-gpu}/tests/hl_test_model" --gtest_filter='*HfParity*'
