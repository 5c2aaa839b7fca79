#!/usr/bin/env bash
# Configure, build and run every test (unit, compile-fail, README, package, example smoke), then
# the sanitizer stage: ASan + UBSan build of the io, aggregate and federated tests and the
# examples' smoke tests, and short runs of the fuzz targets (preset "sanitize"; skip it with
# ROLORA_SANITIZE=0). Arguments go to both ctest runs.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup.sh
# The corpus for the transformer example's end-to-end test (skipped, not failed, without it).
bash scripts/fetch_data.sh || echo "test.sh: warning: corpus not fetched; app.finetune_smoke will be skipped" >&2
# The tokenizer tests' reference library, pinned by tests/tokenizers/package-lock.json (label
# tokenizers: skipped, not failed, when it cannot be installed).
if command -v npm >/dev/null 2>&1; then
  (cd tests/tokenizers && npm ci --no-audit --no-fund >/dev/null 2>&1) ||
    echo "test.sh: warning: npm ci failed in tests/tokenizers; the tokenizers tests will be skipped" >&2
fi
jobs="$(nproc 2>/dev/null || echo 2)"

cmake --preset default
cmake --build --preset default -j "$jobs"
ctest --preset default -j "$jobs" "$@"

if [ "${ROLORA_SANITIZE:-1}" != 0 ]; then
  start=$SECONDS
  cmake --preset sanitize
  cmake --build --preset sanitize -j "$jobs"
  ctest --preset sanitize -j "$jobs" "$@"
  echo "test.sh: sanitizer stage took $((SECONDS - start)) s"
fi
