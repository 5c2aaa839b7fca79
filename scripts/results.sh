#!/usr/bin/env bash
# Reproduces the experiments of docs/results.md with the federated_finetune example.
#
#   scripts/results.sh tune      learning rates per method on the validation split (3 clients)
#   scripts/results.sh clients   3 / 20 / 50 clients x FedIT, FFA-LoRA, RoLoRA at rank 2
#   scripts/results.sh ranks     rank 1 / 2 / 4 / 8 at 3 clients
#   scripts/results.sh all       the three above
#   scripts/results.sh robustness  the heterogeneity grid of docs/results.md (not in `all`):
#                                clients {20, 50, 100} x split {iid, Dirichlet 1.0, 0.3, 0.1} at
#                                rank 2, each with the head training and with --freeze-head; local
#                                steps {4, 16} at 50 clients, Dirichlet 0.3, with FlexLoRA and
#                                FedSA-LoRA too. Cells run in parallel (JOBS, default: the core
#                                count), one thread each.
# Overrides: SEEDS="0 1 2", KS="3 20 50" (clients), RANKS="1 2 4 8", TUNE_GRID="method:lr ...",
# RKS="20 50 100" and SPLITS="iid dir1.0 dir0.3 dir0.1" (robustness), JOBS, NO_BUILD=1 (skip setup,
# data and build), EXTRA (arguments added
# to every run), ROUNDS (30) and EVAL_EVERY (5) for a quick try, TABLE (default results/table). Each run
# writes $TABLE/<experiment>/<run>/<method>.csv and a `done` marker when it finished; a run with
# its marker is skipped, so an interrupted grid resumes where it stopped (an unfinished run starts
# over). scripts/summarize_results.py turns them into the tables of docs/results.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

what="${1:-all}"
seeds=(${SEEDS:-0 1 2})
ks=(${KS:-3 20 50})
ranks=(${RANKS:-1 2 4 8})
exe=build/examples/federated_finetune
table="${TABLE:-results/table}"
common=(--rounds "${ROUNDS:-30}" --eval-every "${EVAL_EVERY:-5}" --no-save ${EXTRA:-})

if [ -z "${NO_BUILD:-}" ]; then  # NO_BUILD=1: use the federated_finetune already in build/
  bash scripts/setup.sh
  bash scripts/fetch_data.sh
  cmake --preset default > /dev/null
  cmake --build --preset default --target federated_finetune -j "$(nproc 2>/dev/null || echo 2)"
fi

run() {  # run <out folder> <args...>
  local out="$1"; shift
  if [ -f "$out/done" ]; then return; fi
  "$exe" "${common[@]}" --out "$out" "$@" | grep -E "^(method|fedit|ffa|rolora|fedsa) " | grep -v " round " || true
  touch "$out/done"
}

if [ "$what" = tune ] || [ "$what" = all ]; then
  # Each method's default rate and its two neighbours in {1e-3, 2e-3, 5e-3, 1e-2, 2e-2}, defaults
  # first; and ffa:2e-3.
  grid=(${TUNE_GRID:-fedit:2e-3 ffa:1e-2 rolora:5e-3 fedit:1e-3 ffa:5e-3 rolora:2e-3 fedit:5e-3 ffa:2e-2 rolora:1e-2 ffa:2e-3})
  for point in "${grid[@]}"; do
    m="${point%%:*}" lr="${point#*:}"
    run "$table/tune/${m}_lr${lr}" --validation --clients 3 --methods "$m" --lr "$lr" --seed 0
  done
fi
if [ "$what" = clients ] || [ "$what" = all ]; then
  for k in "${ks[@]}"; do
    for s in "${seeds[@]}"; do run "$table/clients/k${k}_s${s}" --clients "$k" --rank 2 --seed "$s"; done
  done
fi
if [ "$what" = ranks ] || [ "$what" = all ]; then
  for r in "${ranks[@]}"; do
    for s in "${seeds[@]}"; do run "$table/ranks/r${r}_s${s}" --clients 3 --rank "$r" --seed "$s"; done
  done
fi
if [ "$what" = robustness ]; then
  # One line per cell: <out folder> <arguments>; run_cell skips finished cells.
  cells=()
  for k in ${RKS:-20 50 100}; do
    for split in ${SPLITS:-iid dir1.0 dir0.3 dir0.1}; do
      case "$split" in
        iid) split_args="--split iid" ;;
        dir*) split_args="--split dirichlet --alpha ${split#dir}" ;;
        *) echo "results.sh: unknown split $split (iid or dir<alpha>)" >&2; exit 2 ;;
      esac
      for s in "${seeds[@]}"; do
        cells+=("$table/robustness/k${k}_${split}_s${s} --clients $k --rank 2 --seed $s $split_args")
        cells+=("$table/robustness/k${k}_${split}_frozenhead_s${s} --clients $k --rank 2 --seed $s $split_args --freeze-head")
      done
    done
  done
  for steps in 4 16; do
    for s in "${seeds[@]}"; do
      cells+=("$table/robustness/steps${steps}_k50_dir0.3_s${s} --clients 50 --rank 2 --seed $s --split dirichlet --alpha 0.3 --local-steps $steps --methods fedit,ffa,rolora,flexlora,fedsa")
    done
  done
  run_cell() {  # run_cell <out folder> <args...>
    local out="$1"; shift
    if [ -f "$out/done" ]; then return 0; fi
    mkdir -p "$out"
    if "$exe" "${common[@]}" --threads 1 --out "$out" "$@" > "$out/log.txt" 2>&1; then
      touch "$out/done"; echo "done    $out"
    else
      echo "FAILED  $out (see $out/log.txt)" >&2
    fi
  }
  export -f run_cell
  export exe
  export COMMON="${common[*]}"
  printf '%s\n' "${cells[@]}" |
    xargs -P "${JOBS:-$(nproc 2>/dev/null || echo 2)}" -L 1 bash -c 'common=($COMMON); run_cell "$@"' _
  echo "robustness: $(ls -d "$table"/robustness/*/done 2>/dev/null | wc -l) of ${#cells[@]} cells done"
  exit 0
fi
python3 scripts/summarize_results.py "$table"
