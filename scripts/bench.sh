#!/usr/bin/env bash
# Build (Release, -march=native) and run the benchmarks; JSON goes to results/bench.json.
# Extra arguments are passed to Google Benchmark, e.g.  scripts/bench.sh --benchmark_filter=LoRA
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ ! -f bench/bench_rolora.cpp ]; then
  echo "bench.sh: bench/bench_rolora.cpp does not exist yet" >&2
  exit 1
fi

bash scripts/setup.sh
cmake --preset bench
cmake --build --preset bench --target rolora_bench -j "$(nproc 2>/dev/null || echo 2)"
mkdir -p results
build-bench/bench/rolora_bench \
  --benchmark_out=results/bench.json --benchmark_out_format=json "$@"
