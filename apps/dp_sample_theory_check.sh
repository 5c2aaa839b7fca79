#!/usr/bin/env bash
# ctest app.theory_dp_sample: linear_regression_theory with sample-level DP-SGD (--dp sample;
# FedIT, T rounds of L local steps on batches of B of m samples: every client composes T L steps
# at q = B / m) reports the epsilon privacy_budget computes for (q, z, T L, delta); its CSV gains an
# epsilon column ending at that value; a budget between the epsilon of 5 and 6 rounds stops the
# run with privacy_budget_exceeded before round 5; --target-epsilon alone picks the z that
# privacy_budget --target-epsilon prints; and --resume refuses other DP-SGD parameters.
#   usage: dp_sample_theory_check.sh PATH/TO/linear_regression_theory PATH/TO/privacy_budget WORK
set -euo pipefail
theory=$1
budget=$2
work=$3
rm -rf "$work"
mkdir -p "$work"
m=100 B=10 z=1.1 T=8 L=3 delta=1e-5
q=$(awk -v b="$B" -v m="$m" 'BEGIN { printf "%.17g", b / m }')
common=(--method fedit --rounds "$T" --local-steps "$L" --batch-size "$B" --dim 10 --out-dim 4
        --samples "$m" --clients 4 --eta 0.05 --dp sample --delta "$delta" --clip-norm 0.5)
flags=("${common[@]}" --noise-multiplier "$z")
close() {  # relative difference below 1e-8
  awk -v a="$1" -v b="$2" 'BEGIN { r = (a - b) / b; if (r < 0) r = -r; exit !(r < 1e-8) }'
}

out=$("$theory" "${flags[@]}" --quiet --csv "$work/dp.csv")
ours=$(grep '^privacy: FedIT' <<< "$out" | sed -E 's/.* epsilon ([^ ]+) .*/\1/')
want=$("$budget" --sampling-rate "$q" --noise-multiplier "$z" --steps $((T * L)) --delta "$delta" |
       sed -E 's/^epsilon ([^ ]+) .*/\1/')
echo "theory app (--dp sample): epsilon $ours; privacy_budget: epsilon $want"
if [ -z "$ours" ] || ! close "$ours" "$want"; then
  echo "FAIL: the theory app's epsilon ($ours) is not privacy_budget's ($want)"
  exit 1
fi
head -1 "$work/dp.csv" | grep -q ',epsilon$' || { echo "FAIL: no epsilon column"; exit 1; }
last=$(tail -1 "$work/dp.csv" | awk -F, '{print $NF}')
close "$last" "$want" || { echo "FAIL: the CSV's last epsilon $last is not $want"; exit 1; }

# Fail closed: a target between the epsilon of 5 and 6 rounds stops the run before round 5.
e5=$("$budget" --sampling-rate "$q" --noise-multiplier "$z" --steps $((5 * L)) --delta "$delta" | awk '{print $2}')
e6=$("$budget" --sampling-rate "$q" --noise-multiplier "$z" --steps $((6 * L)) --delta "$delta" | awk '{print $2}')
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

# --target-epsilon alone: z from the accountant over the run's T L steps at q.
zwant=$("$budget" --sampling-rate "$q" --target-epsilon 3 --steps $((T * L)) --delta "$delta" |
        awk '{print $2}')
out=$("$theory" "${common[@]}" --target-epsilon 3 --quiet)
zours=$(grep '^privacy: FedIT' <<< "$out" | sed -E 's/.* z ([^ ,]+),.*/\1/')
eps=$(grep '^privacy: FedIT' <<< "$out" | sed -E 's/.* epsilon ([^ ]+) .*/\1/')
echo "--target-epsilon 3: z $zours (privacy_budget: $zwant), epsilon $eps"
if [ -z "$zours" ] || ! close "$zours" "$zwant" ||
   ! awk -v e="$eps" 'BEGIN { exit !(e <= 3 * (1 + 1e-9) && e > 2.5) }'; then
  echo "FAIL: --target-epsilon 3 gave z $zours (want $zwant) and epsilon $eps"
  exit 1
fi

# --resume refuses a checkpoint whose DP-SGD parameters differ.
"$theory" "${flags[@]}" --quiet --checkpoint-dir "$work/ckpt" --checkpoint-every 2 > /dev/null
set +e
refused=$("$theory" "${flags[@]/$z/1.2}" --quiet --resume "$work/ckpt" 2>&1)
rc=$?
set -e
if [ "$rc" -eq 0 ] || ! grep -q 'sample_dp.noise_multiplier' <<< "$refused"; then
  echo "FAIL: --resume with another noise multiplier was not refused naming it (exit $rc)"
  echo "$refused" | tail -3
  exit 1
fi
echo "PASS"
