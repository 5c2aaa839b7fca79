#!/usr/bin/env bash
# One federated LoRA round of the transformer, rolora against the PyTorch reference, in the same
# run on the same machine, on 1 core and on 2 cores (CORES="1 2" by default).
#
# The peer runs in every thread configuration that does not oversubscribe the cores: torch
# intra-op threads x OPENBLAS_NUM_THREADS <= cores (torch's OpenMP threads and OpenBLAS's own
# pthreads multiply; 2 x 2 on 2 cores is several times slower and not a fair peer). All are
# printed; rolora (--threads = cores: one client per thread) is compared with the fastest one
# that fits in the same number of cores. Arguments go to both programs (same flags; do not pass
# --threads), e.g.  bash bench/run_round.sh --local-steps 4 --alpha 8 --factors B
# ROLORA_ARGS adds flags for rolora only (e.g. ROLORA_ARGS="--base-precision bf16").
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup.sh > /dev/null
# The reference needs Debian's PyTorch with an optimised BLAS (not part of the test set-up).
for pkg in python3-torch libopenblas0-pthread; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    SUDO=(); [ "$(id -u)" -ne 0 ] && SUDO=(sudo)
    "${SUDO[@]}" apt-get update && "${SUDO[@]}" apt-get install -y --no-install-recommends python3-torch libopenblas0-pthread
    break
  fi
done

# BUILD_DIR: an existing build tree to use instead of the `bench` preset's build-bench/.
build="${BUILD_DIR:-build-bench}"
[ -n "${BUILD_DIR:-}" ] || cmake --preset bench > /dev/null
cmake --build "$build" --target rolora_transformer_round -j "$(nproc 2>/dev/null || echo 2)" > /dev/null

echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores," \
  "flags: $(grep -m1 flags /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|avx512f|avx512_bf16|amx_bf16)$' | xargs)"
seconds() { awk '/^seconds_per_round/ {print $2}'; }
summary=()
for cores in ${CORES:-1 2}; do
  echo "== $cores core(s), load: $(uptime | sed 's/.*load average: //')"
  out="$("$build"/bench/rolora_transformer_round "$@" ${ROLORA_ARGS:-} --threads "$cores")"
  echo "$out"
  ours="$(echo "$out" | seconds)"
  best=""; best_cfg=""
  for t in 1 2 4 8 16; do
    for b in 1 2 4 8 16; do
      [ $((t * b)) -le "$cores" ] || continue
      out="$(OPENBLAS_NUM_THREADS=$b OMP_NUM_THREADS=$t /usr/bin/python3 bench/pytorch_reference.py "$@" --threads "$t")"
      s="$(echo "$out" | seconds)"
      echo "PyTorch torch_threads=$t OPENBLAS_NUM_THREADS=$b: $s s per round"
      if [ -z "$best" ] || awk -v a="$s" -v b="$best" 'BEGIN { exit !(a < b) }'; then
        best="$s"; best_cfg="torch $t x OpenBLAS $b"
      fi
    done
  done
  summary+=("$(awk -v c="$cores" -v a="$ours" -v b="$best" -v cfg="$best_cfg" 'BEGIN {
    printf "%s core(s): rolora %.3f s, PyTorch fastest (%s) %.3f s -> rolora is %.2fx faster", c, a, cfg, b, b / a }')")
  echo "load after: $(uptime | sed 's/.*load average: //')"
done
echo
printf '%s\n' "${summary[@]}"
