#!/usr/bin/env bash
# ctest app.finetune_dp: federated_finetune --model (the tiny BERT of tests/data/hf_tiny) with
# client-level DP: the CSV's epsilon column ends at the epsilon privacy_budget computes for the
# same q, z, rounds and delta; the progress line shows it; FLoRA (stacking, no mean) is refused
# in one line before any round.
#   usage: dp_finetune_check.sh FEDERATED_FINETUNE PRIVACY_BUDGET HF_TINY WORK_DIR
set -euo pipefail
exe=$1 budget=$2 tiny=$3 work=$4
rm -rf "$work"
mkdir -p "$work"
q=0.5 z=1.2 T=3 delta=1e-5
flags=(--model "$tiny/bert" --train "$tiny/app/classify_train.csv" --test "$tiny/app/classify_test.csv"
       --max-len 24 --clients 6 --rounds "$T" --local-steps 2 --batch 4 --base-precision fp32
       --dp client --sampling-rate "$q" --noise-multiplier "$z" --delta "$delta" --clip-norm 0.5)
out=$("$exe" "${flags[@]}" --methods rolora,ffa --out "$work/run")
echo "$out" | grep -E "round +3/3"
want=$("$budget" --sampling-rate "$q" --noise-multiplier "$z" --steps "$T" --delta "$delta" |
       sed -E 's/^epsilon ([^ ]+) .*/\1/')
for method in rolora ffa; do
  head -1 "$work/run/$method.csv" | grep -q ',epsilon$' || { echo "FAIL: $method: no epsilon column"; exit 1; }
  last=$(tail -1 "$work/run/$method.csv" | awk -F, '{print $NF}')
  awk -v a="$last" -v b="$want" 'BEGIN { r = (a - b) / b; if (r < 0) r = -r; exit !(r < 1e-8) }' ||
    { echo "FAIL: $method's last epsilon $last is not privacy_budget's $want"; exit 1; }
done
echo "$out" | grep -qE "rolora +round +3/3 .* eps [0-9.]+" || { echo "FAIL: no epsilon in the progress line"; exit 1; }
echo "epsilon after $T rounds: $want (privacy_budget), the CSVs agree"

set +e
refused=$("$exe" "${flags[@]}" --methods rolora,flora --out "$work/flora" 2>&1)
rc=$?
set -e
echo "$refused"
[ "$rc" -ne 0 ] && [ "$(echo "$refused" | grep -c '^error:')" -eq 1 ] &&
  [[ $refused == *"flora's aggregate is not a mean of the uploaded factors"* ]] &&
  [[ $refused != *"round"* ]] ||
  { echo "FAIL: FLoRA under DP was not refused in one line before RoLoRA's rounds"; exit 1; }
echo "app.finetune_dp: ok"
