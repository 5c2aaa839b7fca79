#!/usr/bin/env bash
# One LoRA training step on Hugging Face shapes (roberta-base, SmolLM2-135M; random weights; LoRA
# r 8 on q, v; batch 8 x 128), rolora (bench/hf_step.cpp) against PyTorch (bench/pytorch_hf_step.py)
# in the same run on the same machine, on 1 and on 2 cores. docs/benchmarks.md ("Hugging Face
# shapes: one LoRA step") has the results.
#
# rolora: fp32 and --base-precision bf16 (the frozen base in bf16, against autocast bf16);
# --threads = cores, one independent step per thread (one client per core, as a
# federation runs them). PyTorch: every configuration that does not oversubscribe the cores
# (torch threads x OPENBLAS_NUM_THREADS <= cores), and on 2 cores also two 1-thread processes side
# by side (two clients, as rolora); the fastest is compared. OpenBLAS's kernel: Debian's 0.3.21
# may pick a slow one for a new CPU (ISSUE-NOTES), so the 1-thread fp32 step is timed with
# OPENBLAS_CORETYPE unset and =SkylakeX and the faster is kept for every other run.
#
# Environment: MODELS (default "roberta-base smollm2-135m"), CORES ("1 2"), STEPS (timed steps
# per run after one warm-up; default 3 for roberta-base, 2 for smollm2-135m), BUILD_DIR (a build
# tree configured with -DROLORA_BUILD_BENCHMARKS=ON; default build-bench via the bench preset).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

build="${BUILD_DIR:-build-bench}"
[ -n "${BUILD_DIR:-}" ] || cmake --preset bench > /dev/null
cmake --build "$build" --target rolora_hf_step -j "${JOBS:-1}" > /dev/null
step_bin="$build/bench/rolora_hf_step"
py=(/usr/bin/python3 bench/pytorch_hf_step.py)

echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "cpu: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores;" \
  "flags: $(grep -m1 flags /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|avx512f|avx512_bf16|amx_bf16|amx_tile)$' | xargs)"
echo "torch: $(/usr/bin/python3 -c 'import torch; print(torch.__version__)');" \
  "OpenBLAS: $(dpkg-query -W -f='${Package} ${Version}' libopenblas0-pthread 2>/dev/null || echo none)"

field() { awk -v k="$1" '$1 == k {print $2; exit}'; }  # value after a key at line start
faster() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(b == "" || a > b) }'; }  # tokens/s a > b?
load() { uptime | sed 's/.*load average: //'; }

# run_torch CORETYPE(- for unset) TORCH_THREADS BLAS_THREADS PRECISION MODEL STEPS -> output
run_torch() {
  local env=(OPENBLAS_NUM_THREADS="$3" OMP_NUM_THREADS="$2")
  [ "$1" = "-" ] || env+=(OPENBLAS_CORETYPE="$1")
  env "${env[@]}" "${py[@]}" --model "$5" --threads "$2" --precision "$4" --steps "$6"
}

summary=()
for model in ${MODELS:-roberta-base smollm2-135m}; do
  steps="${STEPS:-}"
  [ -n "$steps" ] || { [ "$model" = roberta-base ] && steps=3 || steps=2; }
  echo
  echo "=== $model, $steps timed steps per run, load $(load)"
  # OpenBLAS kernel: both, one thread, fp32.
  core=""; core_tps=""; declare -A one_core=()
  for c in - SkylakeX; do
    out="$(run_torch "$c" 1 1 fp32 "$model" "$steps")"
    echo "$out" | sed "s/^/  [torch 1x1 fp32 OPENBLAS_CORETYPE=$c] /"
    tps="$(echo "$out" | field tokens_per_s)"
    one_core[$c]="$tps $(echo "$out" | field peak_rss_mib)"
    if faster "$tps" "$core_tps"; then core="$c"; core_tps="$tps"; fi
  done
  echo "  OpenBLAS kernel kept: OPENBLAS_CORETYPE=${core} ($core_tps tokens/s; unset: ${one_core[-]%% *}, SkylakeX: ${one_core[SkylakeX]%% *})"

  for cores in ${CORES:-1 2}; do
    echo "== $model on $cores core(s), load $(load)"
    out="$("$step_bin" --model "$model" --threads "$cores" --steps "$steps")"
    echo "$out" | grep -v 's in the step$' | sed 's/^/  [rolora] /'
    ours="$(echo "$out" | field tokens_per_s)"
    ours_rss="$(echo "$out" | field peak_rss_mib)"
    floor="$(echo "$out" | sed -n 's/.*-> \([0-9.]*\)% of GEMM floor.*/\1/p')"
    # The same with the frozen base in bf16 (hf_model::hold_base_in_bf16).
    out="$("$step_bin" --model "$model" --threads "$cores" --steps "$steps" --base-precision bf16)"
    echo "$out" | grep -v 's in the step$' | sed 's/^/  [rolora bf16 base] /'
    ours16="$(echo "$out" | field tokens_per_s)"
    ours16_rss="$(echo "$out" | field peak_rss_mib)"
    floor16="$(echo "$out" | sed -n 's/.*-> \([0-9.]*\)% of GEMM floor.*/\1/p')"
    declare -A best=() best_cfg=() best_rss=()
    for prec in fp32 bf16; do
      for t in 1 2; do
        for b in 1 2; do
          [ $((t * b)) -le "$cores" ] || continue
          if [ "$cores" = 1 ] && [ "$prec" = fp32 ]; then  # timed above
            read -r tps rss <<< "${one_core[$core]}"
          else
            out="$(run_torch "$core" "$t" "$b" "$prec" "$model" "$steps")"
            echo "$out" | sed "s/^/  [torch ${t}x$b $prec] /"
            tps="$(echo "$out" | field tokens_per_s)"; rss="$(echo "$out" | field peak_rss_mib)"
          fi
          if faster "$tps" "${best[$prec]:-}"; then
            best[$prec]="$tps"; best_cfg[$prec]="torch $t x OpenBLAS $b"; best_rss[$prec]="$rss"
          fi
        done
      done
      if [ "$cores" -ge 2 ]; then  # two clients: two 1-thread processes side by side
        run_torch "$core" 1 1 "$prec" "$model" "$steps" > /tmp/rolora_hf_step_a.$$ &
        run_torch "$core" 1 1 "$prec" "$model" "$steps" > /tmp/rolora_hf_step_b.$$
        wait
        tps="$(cat /tmp/rolora_hf_step_a.$$ /tmp/rolora_hf_step_b.$$ | awk '$1 == "tokens_per_s" {s += $2} END {print s}')"
        rss="$(cat /tmp/rolora_hf_step_a.$$ /tmp/rolora_hf_step_b.$$ | awk '$1 == "peak_rss_mib" {s += $2} END {print s}')"
        echo "  [torch 2 processes x (1x1) $prec] tokens_per_s $tps (sum), peak_rss_mib $rss (sum)"
        rm -f /tmp/rolora_hf_step_a.$$ /tmp/rolora_hf_step_b.$$
        if faster "$tps" "${best[$prec]:-}"; then
          best[$prec]="$tps"; best_cfg[$prec]="2 processes x torch 1 x OpenBLAS 1"; best_rss[$prec]="$rss"
        fi
      fi
    done
    summary+=("$(printf '| %s | %s | %s | %s (%s) | %.2fx | %s / %s | %s%% |' "$model" "$cores" \
      "$ours" "${best[fp32]}" "${best_cfg[fp32]}" "$(awk -v a="$ours" -v b="${best[fp32]}" 'BEGIN {print a / b}')" \
      "$ours_rss" "${best_rss[fp32]}" "$floor")")
    summary+=("$(printf '| %s | %s | bf16 base: %s | %s (%s, autocast bf16) | %.2fx | %s / %s | %s%% (bf16 frozen rates) |' \
      "$model" "$cores" "$ours16" "${best[bf16]}" "${best_cfg[bf16]}" \
      "$(awk -v a="$ours16" -v b="${best[bf16]}" 'BEGIN {print a / b}')" "$ours16_rss" \
      "${best_rss[bf16]}" "$floor16")")
    echo "  load after: $(load)"
  done
done
echo
echo "OpenBLAS kernel kept: the faster of unset / SkylakeX per model (above); rolora GEMM: oneDNN sgemm"
echo "| model | cores | rolora tokens/s | PyTorch fastest tokens/s (config) | rolora / PyTorch | peak RSS MiB rolora / PyTorch | rolora % of GEMM floor |"
echo "|---|---|---|---|---|---|---|"
printf '%s\n' "${summary[@]}"
