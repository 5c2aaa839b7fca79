#!/usr/bin/env bash
# Build and run the linear-regression theory experiment; results go to results/.
# Extra arguments are passed to the program, e.g.  scripts/run_theory.sh --rounds 50
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ ! -f apps/linear_regression_theory.cpp ]; then
  echo "run_theory.sh: apps/linear_regression_theory.cpp does not exist yet" >&2
  exit 1
fi

bash scripts/setup.sh
cmake --preset default
cmake --build --preset default --target linear_regression_theory -j "$(nproc 2>/dev/null || echo 2)"
mkdir -p results
build/apps/linear_regression_theory --method all \
  --csv results/theory.csv --plot results/theory.svg "$@"
