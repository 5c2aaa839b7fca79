#!/usr/bin/env bash
# The client-level DP experiment of docs/privacy.md: FedIT, FFA-LoRA, RoLoRA and the head-only
# control under DP-FedAvg on the main job at 100 clients (IID), Poisson client sampling q = 0.1,
# 20 rounds, delta 1e-5, epsilon in {1, 3, 8} and without DP (infinity).
#
#   scripts/dp_results.sh tune    seed 0, validation split: for every (method, epsilon) the clip
#                                 norm C in {0.03, 0.1, 0.3, 1} x the method's rate and its two
#                                 neighbours in {1e-3, 2e-3, 5e-3, 1e-2, 2e-2}; without DP the
#                                 three rates only (no clipping, no noise)
#                                 A pick on a side of its grid gets the next value beyond it (the
#                                 ladders of scripts/summarize_dp.py), until none is
#   scripts/dp_results.sh final   seeds 0 1 2, test split, each (method, epsilon) at the pair with
#                                 the best final validation accuracy (ties: the first in grid
#                                 order), read from the tune runs by scripts/summarize_dp.py
#   scripts/dp_results.sh all     both
#   scripts/dp_results.sh sample  sample-level DP-SGD (point 6's second half): the main job at 3
#                                 and 20 clients (IID, every client every round, 20 rounds of 4
#                                 local steps), epsilon in {1, 3, 6} and without DP (--dp none),
#                                 tuned then run as above under $OUT/sample/clients<N>/; the clip
#                                 norm of one example's gradient fixed at 0.3 (the AdamW step is
#                                 nearly invariant to a common scale of signal and noise, so the
#                                 rate is the axis that matters), the rate from {5e-5, 2e-4, 1e-3}
#                                 (without DP {2e-3, 5e-3, 1e-2}), extended along its ladder
#   scripts/dp_results.sh theory  how noise on the factors propagates (linear_regression_theory,
#                                 FedIT, FFA-LoRA, RoLoRA, defaults of scripts/run_theory.sh: 10
#                                 clients, q 1, 50 iterations): client-level DP with clip norm 0.1
#                                 and noise multiplier z in {0, 0.25, ..., 8}, seeds 0 1 2; one CSV
#                                 per (z, seed) under $OUT/theory/ (EXE_THEORY, default
#                                 build/apps/linear_regression_theory)
# The noise multiplier of each epsilon is the accountant's (privacy_budget --target-epsilon over
# the run's 20 rounds at q 0.1). One job per run, JOBS in parallel (default 1), one thread each,
# at nice NICE (19); a run whose folder has its `done` marker is skipped, so an interrupted grid
# resumes. A run that fails (the noise drove the model to NaN: the server refuses the non-finite
# upload and the run stops) is a result too: its exit status is in `exit`, its log in log.txt. Overrides: EXE (default build/apps/federated_finetune), OUT (default docs/runs/privacy),
# NO_BUILD=1, LIST=1 (print the jobs, run nothing).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

what="${1:-all}"
exe="${EXE:-build/apps/federated_finetune}"
out="${OUT:-docs/runs/privacy}"
jobs="${JOBS:-1}"
common=(--clients 100 --split iid --rounds 20 --eval-every 5 --threads 1 --no-save
        --sampling-rate 0.1 --delta 1e-5)
methods=(fedit ffa rolora head)
epsilons=(1 8 3 inf)  # the run order
clips=(0.03 0.1 0.3 1)
declare -A rates=([fedit]="1e-3 2e-3 5e-3" [ffa]="5e-3 1e-2 2e-2" [rolora]="2e-3 5e-3 1e-2"
                  [head]="1e-3 2e-3 5e-3")

if [ -z "${NO_BUILD:-}" ] && [ -z "${LIST:-}" ]; then
  bash scripts/setup.sh
  bash scripts/fetch_data.sh
  cmake --preset default > /dev/null
  cmake --build --preset default --target federated_finetune linear_regression_theory -j "$(nproc 2>/dev/null || echo 2)"
fi

# The DP flags of one cell: <epsilon> <clip>. Client level without DP: the same Poisson q, but
# nothing is clipped and nothing is added (--noise-multiplier 0 with a clip norm no update
# reaches). Sample level without DP: a plain run (fixed batches).
dp=client
dp_flags() {
  if [ "$1" = inf ] && [ "$dp" = sample ]; then
    echo "--dp none"
  elif [ "$1" = inf ]; then
    echo "--dp client --noise-multiplier 0 --clip-norm 1e30"
  else
    echo "--dp $dp --target-epsilon $1 --clip-norm $2"
  fi
}

source scripts/grid_jobs.sh  # add, run_jobs

# The jobs of one epsilon: tune (seed 0, validation) or final (3 seeds, test, at the picks).
tune_jobs() {
  local eps=$1
  for m in "${methods[@]}"; do
    local ladder="${rates[$m]}"
    [ "$eps" = inf ] && [ "$dp" = sample ] && ladder="$rates_nodp"
    for lr in $ladder; do
      if [ "$eps" = inf ]; then
        add "$out/tune/eps$eps/$m/lr$lr" --methods "$m" --lr "$lr" --seed 0 --validation \
          $(dp_flags inf)
      else
        for c in "${clips[@]}"; do
          add "$out/tune/eps$eps/$m/lr$lr-C$c" --methods "$m" --lr "$lr" --seed 0 --validation \
            $(dp_flags "$eps" "$c")
        done
      fi
    done
  done
}
final_jobs() {
  local eps=$1
  # "<eps> <method> <lr> <clip>" lines, one per cell
  python3 scripts/summarize_dp.py --picks "$out" | while read -r e m lr c; do
    [ "$e" = "$eps" ] || continue
    for seed in 0 1 2; do
      add "$out/final/eps$e/$m/seed$seed" --methods "$m" --lr "$lr" --seed "$seed" \
        $(dp_flags "$e" "$c")
    done
  done
}

# One epsilon at a time, tuned then run on the test split, so that an interrupted grid leaves
# whole rows of the table.
# The tuning runs summarize_dp.py --extend asks for (a pick on a side of its grid gets the next
# rate or clip norm beyond it), until it asks for none.
extend_jobs() {
  local eps=$1
  python3 scripts/summarize_dp.py --extend "$out" | while read -r e m lr c; do
    [ "$e" = "$eps" ] || continue
    if [ "$e" = inf ]; then
      add "$out/tune/eps$e/$m/lr$lr" --methods "$m" --lr "$lr" --seed 0 --validation \
        $(dp_flags inf)
    else
      add "$out/tune/eps$e/$m/lr$lr-C$c" --methods "$m" --lr "$lr" --seed 0 --validation \
        $(dp_flags "$e" "$c")
    fi
  done
}

grid() {  # the tune and final runs of $out, one epsilon at a time
  for eps in "${epsilons[@]}"; do
    if [ "$what" = tune ] || [ "$what" = all ]; then
      tune_jobs "$eps"
      run_jobs
      while [ -z "${LIST:-}" ]; do
        extend_jobs "$eps"
        [ -s "$jobfile" ] || break
        run_jobs
      done
    fi
    if [ "$what" = final ] || [ "$what" = all ]; then final_jobs "$eps"; run_jobs; fi
  done
}

if [ "$what" = tune ] || [ "$what" = final ] || [ "$what" = all ]; then grid; fi

if [ "$what" = sample ]; then
  dp=sample
  epsilons=(1 3 6 inf)
  clips=(0.3)
  rates=([fedit]="5e-5 2e-4 1e-3" [ffa]="5e-5 2e-4 1e-3" [rolora]="5e-5 2e-4 1e-3"
         [head]="5e-5 2e-4 1e-3")
  rates_nodp="2e-3 5e-3 1e-2"
  root="$out"
  for n in 3 20; do
    out="$root/sample/clients$n"
    common=(--clients "$n" --split iid --rounds 20 --eval-every 5 --threads 1 --no-save
            --delta 1e-5)
    what=all grid
  done
fi

if [ "$what" = theory ]; then
  theory="${EXE_THEORY:-build/apps/linear_regression_theory}"
  mkdir -p "$out/theory"
  for z in 0 0.25 0.5 1 2 4 8; do
    for seed in 0 1 2; do
      csv="$out/theory/z${z}_s$seed.csv"
      [ -f "$csv" ] && continue
      echo "$theory --method all --rounds 50 --seed $seed --dp client --clip-norm 0.1 --noise-multiplier $z --quiet --csv $csv > /dev/null" >> "$jobfile"
    done
  done
fi

run_jobs
