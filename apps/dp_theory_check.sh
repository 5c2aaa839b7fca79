#!/usr/bin/env bash
# ctest app.theory_dp: linear_regression_theory with client-level DP (FFA-LoRA: one round per
# iteration, so T = --rounds) reports the epsilon privacy_budget computes for the same q, z, T and
# delta, digit for digit; its CSV gains an epsilon column whose last value is that epsilon; a
# budget below what the run spends stops it with privacy_budget_exceeded before the exceeding
# round; and --resume refuses a checkpoint written with other DP parameters.
#   usage: dp_theory_check.sh PATH/TO/linear_regression_theory PATH/TO/privacy_budget WORK_DIR
set -euo pipefail
theory=$1
budget=$2
work=$3
rm -rf "$work"
mkdir -p "$work"
q=0.3 z=1.1 T=12 delta=1e-5
flags=(--method ffa --rounds "$T" --dim 20 --out-dim 5 --samples 100 --clients 20 --dp client
       --sampling-rate "$q" --noise-multiplier "$z" --delta "$delta" --clip-norm 0.5)

out=$("$theory" "${flags[@]}" --quiet --csv "$work/dp.csv")
ours=$(grep '^privacy: FFA-LoRA' <<< "$out" | sed -E 's/.* epsilon ([^ ]+) .*/\1/')
want=$("$budget" --sampling-rate "$q" --noise-multiplier "$z" --steps "$T" --delta "$delta" |
       sed -E 's/^epsilon ([^ ]+) .*/\1/')
echo "theory app: epsilon $ours; privacy_budget: epsilon $want"
if [ -z "$ours" ] || [ "$ours" != "$want" ]; then
  echo "FAIL: the theory app's epsilon ($ours) is not privacy_budget's ($want)"
  exit 1
fi
head -1 "$work/dp.csv" | grep -q ',epsilon$' || { echo "FAIL: no epsilon column"; exit 1; }
last=$(tail -1 "$work/dp.csv" | awk -F, '{print $NF}')
awk -v a="$last" -v b="$want" 'BEGIN { r = (a - b) / b; if (r < 0) r = -r; exit !(r < 1e-8) }' ||
  { echo "FAIL: the CSV's last epsilon $last is not $want"; exit 1; }

# Fail closed: a target between the epsilon of 5 and 6 rounds stops the run before round 5.
e5=$("$budget" --sampling-rate "$q" --noise-multiplier "$z" --steps 5 --delta "$delta" | awk '{print $2}')
e6=$("$budget" --sampling-rate "$q" --noise-multiplier "$z" --steps 6 --delta "$delta" | awk '{print $2}')
target=$(awk -v a="$e5" -v b="$e6" 'BEGIN { printf "%.9g", (a + b) / 2 }')
set +e
stopped=$("$theory" "${flags[@]}" --target-epsilon "$target" --quiet 2>&1)
rc=$?
set -e
echo "$stopped" | tail -1
if [ "$rc" -eq 0 ] || ! grep -q 'privacy_budget_exceeded\] round 5: ' <<< "$stopped"; then
  echo "FAIL: expected privacy_budget_exceeded before round 5 (exit $rc)"
  exit 1
fi

# --resume refuses a checkpoint whose DP parameters differ.
"$theory" "${flags[@]}" --quiet --checkpoint-dir "$work/ckpt" --checkpoint-every 2 > /dev/null
set +e
refused=$("$theory" "${flags[@]/$z/1.2}" --quiet --resume "$work/ckpt" 2>&1)
rc=$?
set -e
if [ "$rc" -eq 0 ] || ! grep -q 'privacy.noise_multiplier' <<< "$refused"; then
  echo "FAIL: --resume with another noise multiplier was not refused naming it (exit $rc)"
  echo "$refused" | tail -3
  exit 1
fi
echo "PASS"
