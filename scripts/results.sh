#!/usr/bin/env bash
# Reproduces the experiments of docs/results.md with the federated_finetune example.
#
#   scripts/results.sh tune      learning rates per method on the validation split (3 clients)
#   scripts/results.sh clients   3 / 20 / 50 clients x FedIT, FFA-LoRA, RoLoRA at rank 2
#   scripts/results.sh ranks     rank 1 / 2 / 4 / 8 at 3 clients
#   scripts/results.sh all       the three above
#   scripts/results.sh robustness  the heterogeneity grid of docs/results.md (not in `all`):
#                                clients {20, 50, 100} x split {iid, Dirichlet 1.0, 0.3, 0.1} at
#                                rank 2: head only (no adapters), FedIT, FFA-LoRA, RoLoRA, and the
#                                three with --freeze-head; local steps {4, 16} at 50 clients,
#                                Dirichlet 0.3, with FlexLoRA and FedSA-LoRA too. One job per
#                                (cell, method), JOBS in parallel (default: the core count), one
#                                thread each; a job whose CSV reaches the last round is skipped.
#   scripts/results.sh robustness-tune  learning rates for a heterogeneous regime (REGIME, default
#                                20 clients, Dirichlet 0.3) on the validation split, seed 0; the
#                                picks are R_LR's defaults
# Overrides: SEEDS="0 1 2", KS="3 20 50" (clients), RANKS="1 2 4 8", TUNE_GRID="method:lr ...",
# JOBS, NO_BUILD=1 (skip setup, data and build), EXE (the example, default
# build/apps/federated_finetune), NICE (19, robustness jobs), EXTRA (arguments added to every
# run), ROUNDS (30) and EVAL_EVERY (5), TABLE (default results/table). Robustness: RKS="20 50 100",
# SPLITS="iid dir1.0 dir0.3 dir0.1" (their order is the run order), R_METHODS, R_FROZEN_METHODS,
# R_FROZEN_SPLITS (the splits with the frozen-head control; default all), R_STEPS="4 16" (the
# 50-client Dirichlet-0.3 cells; "" skips them), R_LR="method:lr ..." (default: the rates
# robustness-tune picked, docs/results.md; "": the example's defaults), R_TUNE_GRID="method:lr
# ...", LIST=1 (print the jobs, run nothing). Each run of tune/clients/ranks writes
# $TABLE/<experiment>/<run>/<method>.csv and a `done` marker when it finished; a run with its
# marker is skipped, so an interrupted grid resumes where it stopped (an unfinished run starts
# over). scripts/summarize_results.py turns them into the tables of docs/results.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

what="${1:-all}"
seeds=(${SEEDS:-0 1 2})
ks=(${KS:-3 20 50})
ranks=(${RANKS:-1 2 4 8})
exe="${EXE:-build/apps/federated_finetune}"
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
if [ "$what" = robustness-tune ]; then
  # Learning rates for a heterogeneous regime (REGIME: its arguments), on the validation split,
  # seed 0: each method's IID-tuned rate and the grid {2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 1e-1}
  # around the best, extended until the best was not at an edge (docs/results.md). Runs in
  # parallel; finished runs are skipped.
  regime="${REGIME:---clients 20 --split dirichlet --alpha 0.3}"
  grid=(${R_TUNE_GRID:-fedit:2e-3 fedit:5e-3 fedit:1e-2 fedit:2e-2 ffa:5e-3 ffa:1e-2 ffa:2e-2 ffa:5e-2 ffa:1e-1
        rolora:2e-3 rolora:5e-3 rolora:1e-2 rolora:2e-2 head:2e-3 head:5e-3 head:1e-2 head:2e-2 head:5e-2})
  for point in "${grid[@]}"; do
    m="${point%%:*}" lr="${point#*:}"
    out="$table/robustness-tune/${m}_lr${lr}"
    csv="$out/$m.csv"
    [ -f "$csv" ] && [ "$(tail -n 1 "$csv" | cut -d, -f3)" = "${ROUNDS:-30}" ] && continue
    echo "$out --methods $m --lr $lr"
  done | xargs -P "${JOBS:-$(nproc 2>/dev/null || echo 2)}" -L 1 bash -c \
    'out=$1; shift; mkdir -p "$out"; nice -n "${NICE:-19}" '"$exe ${common[*]}"' --threads 1 \
       --validation --seed 0 '"$regime"' --out "$out" "$@" > "$out/log.txt" 2>&1 &&
     echo "done    $out" || echo "FAILED  $out" >&2' _
  exit 0
fi
if [ "$what" = robustness ]; then
  # One job per (cell, method): results/table/robustness/<cell>/<method>/<method>.csv, where
  # <cell> is k<clients>_<split>_st<local steps>[_fh]_s<seed> (_fh: --freeze-head). A job whose
  # CSV already holds the last round is skipped, so the grid resumes where it stopped (an
  # unfinished job starts over). Jobs are listed cell by cell, the seeds of a cell together, in
  # the order of RKS and SPLITS, so an interrupted grid leaves whole cells (all seeds), not one
  # seed of every cell.
  rounds="${ROUNDS:-30}"
  # R_LR="method:rate ...": robustness-tune's picks (FlexLoRA and FedSA-LoRA at FedIT's rate).
  rates="${R_LR-fedit:1e-2 ffa:5e-2 rolora:1e-2 head:2e-2 flexlora:1e-2 fedsa:1e-2}"
  jobs=()
  add() {  # add <cell> <methods> <arguments...>
    local cell="$1" methods="$2"; shift 2
    local m lr
    for m in ${methods//,/ }; do
      lr=""
      for point in $rates; do [ "${point%%:*}" = "$m" ] && lr="--lr ${point#*:}"; done
      jobs+=("$table/robustness/$cell/$m --methods $m $lr $*")
    done
  }
  split_args() {
    case "$1" in
      iid) echo "--split iid" ;;
      dir*) echo "--split dirichlet --alpha ${1#dir}" ;;
      *) echo "results.sh: unknown split $1 (iid or dir<alpha>)" >&2; exit 2 ;;
    esac
  }
  methods="${R_METHODS-head,fedit,ffa,rolora}"    # with the head training; head: no adapters; "": none
  frozen="${R_FROZEN_METHODS-fedit,ffa,rolora}"   # with --freeze-head; "": none
  for k in ${RKS:-20 50 100}; do
    for split in ${SPLITS:-iid dir1.0 dir0.3 dir0.1}; do
      for s in "${seeds[@]}"; do
        add "k${k}_${split}_st4_s${s}" "$methods" --clients "$k" --rank 2 --seed "$s" $(split_args "$split")
      done
      # R_FROZEN_SPLITS: the splits that get the frozen-head control (default: every split).
      case " ${R_FROZEN_SPLITS:-$split} " in *" $split "*)
        for s in "${seeds[@]}"; do
          add "k${k}_${split}_st4_fh_s${s}" "$frozen" --clients "$k" --rank 2 --seed "$s" \
              $(split_args "$split") --freeze-head
        done ;;
      esac
    done
  done
  # Local steps and the other aggregators at 50 clients, Dirichlet 0.3 (R_STEPS="" skips them).
  for steps in ${R_STEPS-4 16}; do
    [ "$steps" = 4 ] && extra="${R_EXTRA_METHODS:-flexlora,fedsa}" ||
      extra="${R_STEPS_METHODS:-fedit,ffa,rolora,flexlora,fedsa}"
    for s in "${seeds[@]}"; do
      add "k50_dir0.3_st${steps}_s${s}" "$extra" --clients 50 --rank 2 --seed "$s" \
          --split dirichlet --alpha 0.3 --local-steps "$steps"
    done
  done
  if [ -n "${LIST:-}" ]; then printf '%s\n' "${jobs[@]}"; exit 0; fi  # LIST=1: the jobs only
  run_job() {  # run_job <out folder> <args...>
    local out="$1"; shift
    local csv; csv="$out/$(basename "$out").csv"
    if [ -f "$csv" ] && [ "$(tail -n 1 "$csv" | cut -d, -f3)" = "$ROUNDS_WANTED" ]; then return 0; fi
    mkdir -p "$out"
    local t0=$SECONDS
    if nice -n "${NICE:-19}" "$exe" "${common[@]}" --threads 1 --out "$out" "$@" > "$out/log.txt" 2>&1; then
      echo "done    $out ($((SECONDS - t0)) s)"
    else
      echo "FAILED  $out (see $out/log.txt)" >&2
    fi
  }
  export -f run_job
  export exe ROUNDS_WANTED="$rounds" COMMON="${common[*]}"
  printf '%s\n' "${jobs[@]}" |
    xargs -P "${JOBS:-$(nproc 2>/dev/null || echo 2)}" -L 1 bash -c 'common=($COMMON); run_job "$@"' _
  complete=0
  for j in "${jobs[@]}"; do
    out="${j%% *}"; csv="$out/$(basename "$out").csv"
    [ -f "$csv" ] && [ "$(tail -n 1 "$csv" | cut -d, -f3)" = "$rounds" ] && complete=$((complete + 1))
  done
  echo "robustness: $complete of ${#jobs[@]} runs complete"
  exit 0
fi
python3 scripts/summarize_results.py "$table"
