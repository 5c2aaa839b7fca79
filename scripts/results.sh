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
#   scripts/results.sh paper-tune  the paper's protocol (below): SGD rates per method, validation
#   scripts/results.sh paper     the paper's protocol: 50 clients x {Dirichlet 0.3, IID, Dirichlet
#                                0.1} x seeds x head only, FedIT, FFA-LoRA, RoLoRA, FedSA-LoRA
#   scripts/results.sh params    fewer fine-tuning parameters in that protocol: rank {1, 2, 4, 8} x
#                                adapted layers {all, top half, last} x FedIT, FFA-LoRA, RoLoRA
#                                (the paper grids write docs/runs/paper/; summarize_paper.py
#                                turns them into docs/results.md's tables)
#   scripts/results.sh personal  the 50-client Dirichlet-0.3 cell of the robustness grid with each
#                                client's own model scored too (--personal-eval; FedSA-LoRA)
#   scripts/results.sh toy       the Fashion-MNIST toy (apps/mnist_toy) into docs/runs/toy
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
{  # bash reads this block whole before running it: editing the file under a running grid is safe
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

run() {  # run <out folder> <args...>: the output in <out>/log.txt; `done` only when it succeeded
  local out="$1"; shift
  if [ -f "$out/done" ]; then return; fi
  mkdir -p "$out"
  "$exe" "${common[@]}" --out "$out" "$@" > "$out/log.txt" 2>&1
  touch "$out/done"
  grep -E "^(method|fedit|ffa|rolora|fedsa) " "$out/log.txt" | grep -v " round " || true
}

if [ "$what" = tune ] || [ "$what" = all ]; then
  # Each method's rate and its two neighbours in {1e-3, 2e-3, 5e-3, 1e-2, 2e-2}, and ffa:2e-3;
  # rolora:2e-2 since the rerun on the AVX-512 VM put RoLoRA's best at 1e-2.
  grid=(${TUNE_GRID:-fedit:2e-3 ffa:1e-2 rolora:5e-3 fedit:1e-3 ffa:5e-3 rolora:2e-3 fedit:5e-3 ffa:2e-2 rolora:1e-2 ffa:2e-3 rolora:2e-2})
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
if [ "$what" = toy ]; then
  # The non-linear toy of docs/results.md (apps/mnist_toy, Fashion-MNIST turned a quarter): the
  # rates on validation, 10 and 50 clients x 3 seeds (ranks 1, 2, 4 per run), the two checks and
  # the stronger skews, into TOY_OUT (docs/runs/toy): one folder per command with its runs.csv,
  # log.txt and a `done` marker (a folder with it is skipped). About 7 minutes on 2 cores.
  toy="${TOY_EXE:-build/apps/mnist_toy}" out="${TOY_OUT:-docs/runs/toy}"
  [ -z "${NO_BUILD:-}" ] && cmake --build --preset default --target mnist_toy
  toy_run() {  # toy_run <folder> <args...>
    local dir="$out/$1"; shift
    [ -f "$dir/done" ] && return
    mkdir -p "$dir"
    "$toy" --threads "${TOY_THREADS:-2}" --out "$dir" "$@" > "$dir/log.txt" 2>&1
    rm -f "$dir"/*.npy "$dir"/*.svg "$dir"/*.svg.dat  # runs.csv holds the same rows
    touch "$dir/done" && echo "done    $dir"
  }
  for lr in 1e-3 3e-3 1e-2 3e-2 1e-1; do toy_run "tune_lr$lr" --validation --ranks 2 --lr "$lr"; done
  # FFA-LoRA's best, 1e-1, was at the grid's edge: extended until it is not
  for lr in 3e-1 1; do toy_run "tune_ffa_lr$lr" --validation --ranks 2 --methods ffa --lr "$lr"; done
  for s in "${seeds[@]}"; do for k in 10 50; do toy_run "k${k}_s$s" --clients "$k" --seed "$s"; done; done
  toy_run long_r4_k10_s0 --clients 10 --ranks 4 --rounds 90 --eval-every 10
  toy_run diag_r4_lr1e-2 --validation --ranks 4 --methods rolora,fedit --lr 1e-2
  toy_run diag_r4_lr3e-2 --validation --ranks 4 --methods rolora --lr 3e-2
  toy_run skew_dir0.1_k50_s0 --clients 50 --split dirichlet --alpha 0.1
  for s in "${seeds[@]}"; do
    toy_run "skew_classes2_k50_s$s" --clients 50 --split classes --classes-per-client 2 --seed "$s"
  done
  python3 scripts/summarize_toy.py "$out"
  exit 0
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
if [ "$what" = personal ]; then
  # FedSA-LoRA measured fairly: the robustness grid's 50-client Dirichlet 0.3 cell (4 local steps,
  # its rates) at ROUNDS (30; the grid ran 10) with --personal-eval: each client's own model (FedSA-LoRA: the
  # shared A with its own B) on its share of the test split, drawn with its label mix, beside the
  # global model's test accuracy. Runs under docs/runs/personal/s<seed>/<method>/.
  jobs="${JOBS:-1}"
  common=(--clients 50 --split dirichlet --alpha 0.3 --rank 2 --rounds "${ROUNDS:-30}"
          --eval-every "${EVAL_EVERY:-5}" --threads 1 --no-save --personal-eval ${EXTRA:-})
  source scripts/grid_jobs.sh  # add, run_jobs
  for s in "${seeds[@]}"; do
    for point in ${R_LR-head:2e-2 fedit:1e-2 ffa:5e-2 rolora:1e-2 fedsa:1e-2}; do
      add "docs/runs/personal/s$s/${point%%:*}" --methods "${point%%:*}" --lr "${point#*:}" --seed "$s"
    done
  done
  run_jobs
  exit 0
fi
if [ "$what" = paper-tune ] || [ "$what" = paper ] || [ "$what" = params ]; then
  # The paper's protocol (docs/results.md "The paper's protocol"): the built-in model at
  # PAPER_DEPTH (4) layers, LoRA on query and value of the top half of them, lora_alpha = 2 r
  # (FederatedScope-LLM's GLUE configs: r 8, alpha 16), the classifier head a linear probe
  # trained centrally on the public split and then frozen, plain SGD, 20 local steps of 16
  # e-mails, 50 clients of which PAPER_PER_ROUND (10; 0: all) take part in a round, every
  # evaluation also scoring each client's own model (--personal-eval). One job per run under $PAPER_OUT/<grid>/..., checkpointed every round so a
  # killed run resumes (grid_jobs.sh: SHARD=i/n splits the list over machines, JOBS in parallel,
  # LIST=1 prints it).
  out="${PAPER_OUT:-docs/runs/paper}"
  depth="${PAPER_DEPTH:-4}"
  top=$(seq -s ' ' $((depth / 2)) $((depth - 1)))
  jobs="${JOBS:-1}"
  common=(--model-layers "$depth" --clients 50 --clients-per-round "${PAPER_PER_ROUND:-10}"
          --local-steps 20 --batch 16 --optimizer sgd
          --head-probe "${PAPER_PROBE:-300}" --threads 1 --no-save --personal-eval
          --eval-every "${EVAL_EVERY:-10}" ${EXTRA:-})
  export CHECKPOINTS=1
  source scripts/grid_jobs.sh  # add, run_jobs
  adapted() {  # adapted <method> <rank> <layers...>: the flags of one method's run
    local m="$1" r="$2"; shift 2
    if [ "$m" = head ]; then echo "--methods head"; return; fi  # the head trains, no adapters
    echo "--methods $m --freeze-head --rank $r --lora-alpha $((2 * r)) --layers $*"
  }
  if [ "$what" = paper-tune ]; then
    # Seed 0, validation split, 50 clients at Dirichlet 0.3, PAPER_TUNE_ROUNDS (30) rounds:
    # each method's SGD rate from the ladder of scripts/summarize_paper.py, first
    # {0.05, 0.2, 1}, then the pick's two ladder neighbours, until both were tried (a pick at
    # the ladder's end is marked so). Rank 4 on the top half.
    while :; do
      wanted=$(python3 scripts/summarize_paper.py --tune-next "$out/tune")
      [ -z "$wanted" ] && break
      while read -r m lr; do
        add "$out/tune/$m/lr$lr" $(adapted "$m" 4 $top) --lr "$lr" --seed 0 --validation \
          --rounds "${PAPER_TUNE_ROUNDS:-30}" --split dirichlet --alpha 0.3
      done <<< "$wanted"
      if [ -n "${LIST:-}${SHARD:-}" ]; then run_jobs; break; fi  # one pass: print, or a shard
      run_jobs
    done
    python3 scripts/summarize_paper.py --tune "$out/tune"
    exit 0
  fi
  picks=$(python3 scripts/summarize_paper.py --picks "$out/tune")  # "method rate" lines
  rate() { awk -v m="$1" '$1 == m { print $2 }' <<< "$picks"; }
  split_flags() { [ "$1" = iid ] && echo "--split iid" || echo "--split dirichlet --alpha ${1#dir}"; }
  rounds=(--rounds "${PAPER_ROUNDS:-100}")
  if [ "$what" = paper ]; then
    # 50 clients x {IID, Dirichlet 0.3, 0.1} x seeds x the head-only control, FedIT, FFA-LoRA,
    # RoLoRA and FedSA-LoRA at rank 4 on the top half, PAPER_ROUNDS (100) rounds.
    for split in ${PAPER_SPLITS:-dir0.3 iid dir0.1}; do
      for s in "${seeds[@]}"; do
        for m in ${PAPER_METHODS:-head fedit ffa rolora fedsa}; do
          add "$out/table/${split}_s$s/$m" $(adapted "$m" 4 $top) --lr "$(rate "$m")" --seed "$s" \
            "${rounds[@]}" $(split_flags "$split")
        done
      done
    done
  else
    # Fewer fine-tuning parameters at 50 clients, Dirichlet 0.3: rank {1, 2, 4, 8} x adapted
    # layers {all, top half, last} x FedIT, FFA-LoRA, RoLoRA x seeds at the rates tuned at rank 4
    # on the top half; the head-only control is the paper grid's.
    last=$((depth - 1))
    for s in "${seeds[@]}"; do
      for r in ${PARAMS_RANKS:-1 2 4 8}; do
        for layers in all top last; do
          case $layers in all) l=$(seq -s ' ' 0 $last) ;; top) l=$top ;; last) l=$last ;; esac
          [ "$r" = 4 ] && [ "$layers" = top ] && continue  # the paper grid's runs
          for m in fedit ffa rolora; do
            add "$out/params/r${r}_$layers/s$s/$m" $(adapted "$m" "$r" $l) --lr "$(rate "$m")" \
              --seed "$s" "${rounds[@]}" --split dirichlet --alpha 0.3
          done
        done
      done
    done
  fi
  run_jobs
  exit 0
fi
python3 scripts/summarize_results.py "$table"
exit
}
