#!/usr/bin/env bash
# Configure, build and run every test (unit, compile-fail, README, package, example smoke).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup.sh
# The corpus for the transformer example's end-to-end test (skipped, not failed, without it).
bash scripts/fetch_data.sh || echo "test.sh: warning: corpus not fetched; example.finetune_smoke will be skipped" >&2
jobs="$(nproc 2>/dev/null || echo 2)"

cmake --preset default
cmake --build --preset default -j "$jobs"
ctest --preset default -j "$jobs" "$@"
