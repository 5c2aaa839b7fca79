#!/usr/bin/env bash
# The cost of sample-level DP-SGD on the built-in transformer (issue 22): one private step (exact
# per-example clip + noise, privacy/dp_sgd.hpp) against one plain step in rolora, and PyTorch
# 1.13's per-sample gradients (functorch vmap(grad(...)) over the LoRA factors and the head +
# clip + sum + noise) on the same model in fp32, one thread each; prints the ratios.
# Shapes: bench/pytorch_reference.py's defaults (d 128, 4 heads, 2 layers, d_ff 512, 16 x 128
# tokens, r 2 on q and v, the head trained) with federated_finetune's alpha 8; both factors train
# (--factors AB). Extra arguments go to both programs (same flags), e.g. --factors B.
# ROLORA_BIN: a built rolora_dp_sgd_step to use instead of building the `bench` preset's.
# The peer's OpenBLAS runs with its default kernel and, where the CPU has AVX-512, with
# OPENBLAS_CORETYPE=SkylakeX (Debian's 0.3.21 takes newer Xeons for Cooperlake); the faster counts.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ -n "${ROLORA_BIN:-}" ]; then
  bin="$ROLORA_BIN"
else
  build="${BUILD_DIR:-build-bench}"
  [ -n "${BUILD_DIR:-}" ] || cmake --preset bench > /dev/null
  cmake --build "$build" --target rolora_dp_sgd_step -j "$(nproc 2>/dev/null || echo 2)" > /dev/null
  bin="$build/bench/rolora_dp_sgd_step"
fi
/usr/bin/python3 -c 'import torch, functorch' 2>/dev/null ||
  { echo "needs Debian's python3-torch (1.13, with functorch) and libopenblas0-pthread"; exit 1; }

echo "machine: $(lscpu | grep 'Model name' | cut -d: -f2 | xargs), $(nproc) cores; 1 thread each"
echo "load before: $(uptime | sed 's/.*load average: //')"
value() { awk -v k="$1" '$1 == k {print $2}'; }
ours=$(OMP_NUM_THREADS=1 "$bin" "$@")
echo "$ours"
r_plain=$(echo "$ours" | value plain_step_seconds)
r_private=$(echo "$ours" | value private_step_seconds)

best_plain="" best_private="" best_kernel=""
kernels=(default)
grep -qw avx512f /proc/cpuinfo && kernels+=(SkylakeX)
for k in "${kernels[@]}"; do
  env=(OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 OPENBLAS_VERBOSE=2)
  [ "$k" = default ] || env+=(OPENBLAS_CORETYPE="$k")
  out=$(env "${env[@]}" /usr/bin/python3 bench/pytorch_dp_sgd_step.py --threads 1 "$@" 2>&1)
  core=$(echo "$out" | grep -m1 -i 'core:' | sed 's/.*[Cc]ore: *//' || true)
  p=$(echo "$out" | value plain_step_seconds)
  q=$(echo "$out" | value private_step_seconds)
  echo "PyTorch, OpenBLAS kernel $k (${core:-?}): plain $p s, private $q s"
  if [ -z "$best_private" ] || awk -v a="$q" -v b="$best_private" 'BEGIN { exit !(a < b) }'; then
    best_plain=$p best_private=$q best_kernel="$k (${core:-?})"
  fi
done
echo "load after: $(uptime | sed 's/.*load average: //')"
echo
awk -v rp="$r_plain" -v rq="$r_private" -v tp="$best_plain" -v tq="$best_private" -v k="$best_kernel" 'BEGIN {
  printf "rolora:  plain %.4f s, private %.4f s per step -> DP-SGD costs %.2fx a plain step\n", rp, rq, rq / rp
  printf "PyTorch: plain %.4f s, private %.4f s per step -> DP-SGD costs %.2fx a plain step (OpenBLAS %s)\n", tp, tq, tq / tp, k
  printf "private step: rolora is %.1fx faster than PyTorch functorch (target >= 3x); plain step: %.1fx\n", tq / rq, tp / rp
}'
