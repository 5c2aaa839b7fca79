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
# ROLORA_ARGS adds flags for rolora only. BF16=1 compares at bf16: rolora's bf16 frozen base
# (--base-precision bf16) against PyTorch under torch.autocast("cpu", dtype=torch.bfloat16)
# (pytorch_reference.py --bf16), never against fp32 PyTorch.
# OpenBLAS: Debian's 0.3.21 may pick a slow kernel for a CPU newer than it knows (an Intel Xeon
# taken for Cooperlake, an AMD EPYC Zen 4 for Haswell); on an AVX-512 CPU each peer
# configuration is timed with OpenBLAS's own choice and with OPENBLAS_CORETYPE=SkylakeX, the
# faster kept, and the kernel OpenBLAS reports (OPENBLAS_VERBOSE=2) printed.
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
build_log="$(mktemp)"
cmake --build "$build" --target rolora_transformer_round -j "$(nproc 2>/dev/null || echo 2)" \
  > "$build_log" 2>&1 || { cat "$build_log"; exit 1; }
rm -f "$build_log"

echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores," \
  "flags: $(grep -m1 flags /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|avx512f|avx512_bf16|amx_bf16)$' | xargs)"
seconds() { awk '/^seconds_per_round/ {print $2}'; }
peer_args=(); ours_args=(${ROLORA_ARGS:-})
if [ -n "${BF16:-}" ]; then peer_args=(--bf16); ours_args+=(--base-precision bf16); fi
coretypes=(default)
grep -qw avx512f /proc/cpuinfo && coretypes+=(SkylakeX)
summary=()
for cores in ${CORES:-1 2}; do
  echo "== $cores core(s), load: $(uptime | sed 's/.*load average: //')"
  out="$("$build"/bench/rolora_transformer_round "$@" "${ours_args[@]}" --threads "$cores")"
  echo "$out"
  ours="$(echo "$out" | seconds)"
  best=""; best_cfg=""
  for t in 1 2 4 8 16; do
    for b in 1 2 4 8 16; do
      [ $((t * b)) -le "$cores" ] || continue
      for ct in "${coretypes[@]}"; do
        env=(OPENBLAS_NUM_THREADS=$b OMP_NUM_THREADS=$t OPENBLAS_VERBOSE=2)
        [ "$ct" = default ] || env+=(OPENBLAS_CORETYPE=$ct)
        out="$(env "${env[@]}" /usr/bin/python3 bench/pytorch_reference.py "$@" "${peer_args[@]}" \
          --threads "$t" 2>&1)"
        s="$(echo "$out" | seconds)"
        kernel="$(echo "$out" | sed -n 's/^Core: *//p' | head -1)"
        echo "PyTorch torch_threads=$t OPENBLAS_NUM_THREADS=$b OpenBLAS kernel ${kernel:-?} ($ct): $s s per round"
        if [ -z "$best" ] || awk -v a="$s" -v b="$best" 'BEGIN { exit !(a < b) }'; then
          best="$s"; best_cfg="torch $t x OpenBLAS $b, kernel ${kernel:-?}"
        fi
      done
    done
  done
  summary+=("$(awk -v c="$cores" -v a="$ours" -v b="$best" -v cfg="$best_cfg" 'BEGIN {
    printf "%s core(s): rolora %.3f s, PyTorch fastest (%s) %.3f s -> rolora is %.2fx faster", c, a, cfg, b, b / a }')${BF16:+ (both bf16)}")
  echo "load after: $(uptime | sed 's/.*load average: //')"
done
echo
printf '%s\n' "${summary[@]}"
