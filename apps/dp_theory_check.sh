#!/usr/bin/env bash
# ctest app.theory_dp and app.theory_dp_sample: linear_regression_theory under differential
# privacy reports the epsilon privacy_budget computes for the same mechanism, digit for digit; its
# CSV gains an epsilon column whose last value is that epsilon; a budget between the epsilons of
# 5 and 6 rounds stops the run with privacy_budget_exceeded before round 5; a run killed with
# SIGKILL and resumed writes the whole run's CSV (the spent budget included); and --resume refuses
# a checkpoint written with another noise multiplier, naming it.
#   client  client-level DP, FFA-LoRA (one round per iteration): T = --rounds steps at the client
#           sampling rate q
#   sample  sample-level DP-SGD, FedIT: every client composes T rounds of L local steps at
#           q = B / m; also: --target-epsilon alone picks the z privacy_budget --target-epsilon
#           prints
#   usage: dp_theory_check.sh client|sample PATH/TO/linear_regression_theory PATH/TO/privacy_budget
#          WORK_DIR
set -euo pipefail
mode=$1
theory=$2
budget=$3
work=$4
rm -rf "$work"
mkdir -p "$work"
z=1.1 delta=1e-5
if [ "$mode" = client ]; then
  q=0.3 T=12 L=1 method=FFA-LoRA key=privacy.noise_multiplier
  common=(--method ffa --rounds "$T" --dim 20 --out-dim 5 --samples 100 --clients 20
          --dp client --sampling-rate "$q" --delta "$delta" --clip-norm 0.5)
else
  m=100 B=10 T=8 L=3 method=FedIT key=sample_dp.noise_multiplier
  q=$(awk -v b="$B" -v m="$m" 'BEGIN { printf "%.17g", b / m }')
  common=(--method fedit --rounds "$T" --local-steps "$L" --batch-size "$B" --dim 10 --out-dim 4
          --samples "$m" --clients 4 --eta 0.05 --dp sample --delta "$delta" --clip-norm 0.5)
fi
flags=("${common[@]}" --noise-multiplier "$z")
close() {  # relative difference below 1e-8
  awk -v a="$1" -v b="$2" 'BEGIN { r = (a - b) / b; if (r < 0) r = -r; exit !(r < 1e-8) }'
}
budget_after() {  # the epsilon privacy_budget gives for ROUNDS rounds
  "$budget" --sampling-rate "$q" --noise-multiplier "$z" --steps $(($1 * L)) --delta "$delta" |
    awk '{print $2}'
}

out=$("$theory" "${flags[@]}" --quiet --csv "$work/dp.csv")
ours=$(grep "^privacy: $method" <<< "$out" | sed -E 's/.* epsilon ([^ ]+) .*/\1/')
want=$(budget_after "$T")
echo "theory app (--dp $mode): epsilon $ours; privacy_budget: epsilon $want"
# client: the same digits; sample: the app's step count is summed per client, 1e-8 relative
if [ -z "$ours" ] || ! close "$ours" "$want" || { [ "$mode" = client ] && [ "$ours" != "$want" ]; }; then
  echo "FAIL: the theory app's epsilon ($ours) is not privacy_budget's ($want)"
  exit 1
fi
head -1 "$work/dp.csv" | grep -q ',epsilon$' || { echo "FAIL: no epsilon column"; exit 1; }
last=$(tail -1 "$work/dp.csv" | awk -F, '{print $NF}')
close "$last" "$want" || { echo "FAIL: the CSV's last epsilon $last is not $want"; exit 1; }

# Fail closed: a target between the epsilon of 5 and 6 rounds stops the run before round 5.
target=$(awk -v a="$(budget_after 5)" -v b="$(budget_after 6)" 'BEGIN { printf "%.9g", (a + b) / 2 }')
set +e
stopped=$("$theory" "${flags[@]}" --target-epsilon "$target" --quiet 2>&1)
rc=$?
set -e
echo "$stopped" | tail -1
if [ "$rc" -eq 0 ] || ! grep -q 'privacy_budget_exceeded\] round 5: ' <<< "$stopped"; then
  echo "FAIL: expected privacy_budget_exceeded before round 5 (exit $rc)"
  exit 1
fi

if [ "$mode" = sample ]; then  # --target-epsilon alone: z from the accountant over T L steps at q
  zwant=$("$budget" --sampling-rate "$q" --target-epsilon 3 --steps $((T * L)) --delta "$delta" |
          awk '{print $2}')
  out=$("$theory" "${common[@]}" --target-epsilon 3 --quiet)
  zours=$(grep "^privacy: $method" <<< "$out" | sed -E 's/.* z ([^ ,]+),.*/\1/')
  eps=$(grep "^privacy: $method" <<< "$out" | sed -E 's/.* epsilon ([^ ]+) .*/\1/')
  echo "--target-epsilon 3: z $zours (privacy_budget: $zwant), epsilon $eps"
  if [ -z "$zours" ] || ! close "$zours" "$zwant" ||
     ! awk -v e="$eps" 'BEGIN { exit !(e <= 3 * (1 + 1e-9) && e > 2.5) }'; then
    echo "FAIL: --target-epsilon 3 gave z $zours (want $zwant) and epsilon $eps"
    exit 1
  fi
fi

# kill -9 after iteration 3 (checkpoints every 2), then --resume: the CSV, the spent epsilon
# column included, is the uninterrupted run's byte for byte.
set +e
"$theory" "${flags[@]}" --quiet --checkpoint-dir "$work/killed" --checkpoint-every 2 \
  --csv "$work/killed.csv" --crash-after 3 > /dev/null 2>&1
rc=$?
set -e
[ "$rc" -eq 137 ] || { echo "FAIL: expected death by SIGKILL (exit 137), got $rc"; exit 1; }
"$theory" "${flags[@]}" --quiet --resume "$work/killed" --csv "$work/killed.csv" > /dev/null
cmp "$work/dp.csv" "$work/killed.csv" ||
  { echo "FAIL: the run killed after iteration 3 and resumed differs from the whole run"; exit 1; }
echo "killed (SIGKILL) after iteration 3, resumed from iteration 2: the same CSV and epsilon"

# --resume refuses a checkpoint whose DP parameters differ.
"$theory" "${flags[@]}" --quiet --checkpoint-dir "$work/ckpt" --checkpoint-every 2 > /dev/null
set +e
refused=$("$theory" "${flags[@]/$z/1.2}" --quiet --resume "$work/ckpt" 2>&1)
rc=$?
set -e
if [ "$rc" -eq 0 ] || ! grep -q "$key" <<< "$refused"; then
  echo "FAIL: --resume with another noise multiplier was not refused naming $key (exit $rc)"
  echo "$refused" | tail -3
  exit 1
fi
echo "PASS"
