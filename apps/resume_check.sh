#!/usr/bin/env bash
# ctest app.theory_resume: kill linear_regression_theory with SIGKILL at two different
# iterations (inside the first method, and inside the second after the first finished), resume
# each with --resume, and compare the CSV and every method's final server state (adapters,
# client state, byte totals) with an uninterrupted run, byte for byte.
#   usage: resume_check.sh PATH/TO/linear_regression_theory WORK_DIR
set -euo pipefail
exe=$1
work=$2
rm -rf "$work"
mkdir -p "$work"
flags=(--rounds 8 --dim 20 --out-dim 5 --samples 200 --clients 4 --checkpoint-every 3)

"$exe" "${flags[@]}" --quiet --checkpoint-dir "$work/straight" --csv "$work/straight.csv" > /dev/null
final_state() { echo "$1/$2/$(cat "$1/$2/latest")/server.safetensors"; }

for kill_at in 5 13; do  # RoLoRA's iteration 5 (last checkpoint: 3); FFA-LoRA's iteration 5
  dir="$work/killed_$kill_at"
  set +e
  "$exe" "${flags[@]}" --quiet --checkpoint-dir "$dir" --csv "$dir.csv" --crash-after "$kill_at" > /dev/null 2>&1
  rc=$?
  set -e
  if [ "$rc" -ne 137 ]; then
    echo "FAIL: expected death by SIGKILL (exit 137) after $kill_at iterations, got exit $rc"
    exit 1
  fi
  if [ -e "$dir.csv" ]; then
    echo "FAIL: the killed run wrote its CSV"
    exit 1
  fi
  "$exe" "${flags[@]}" --resume "$dir" --csv "$dir.csv" > "$dir.log"
  if ! grep -q "resumed after iteration 3 " "$dir.log"; then
    echo "FAIL: the run killed after $kill_at iterations did not resume from iteration 3:"
    cat "$dir.log"
    exit 1
  fi
  cmp "$work/straight.csv" "$dir.csv"
  for method in rolora ffa fedit; do
    cmp "$(final_state "$work/straight" $method)" "$(final_state "$dir" $method)"
  done
  echo "killed after iteration $kill_at, resumed: CSV and final server states byte-identical"
done
