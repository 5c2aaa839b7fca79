#!/usr/bin/env bash
# Reproduces the experiments of docs/results.md with the federated_finetune example.
#
#   scripts/results.sh tune      learning rates per method on the validation split (3 clients)
#   scripts/results.sh clients   3 / 20 / 50 clients x FedIT, FFA-LoRA, RoLoRA at rank 2
#   scripts/results.sh ranks     rank 1 / 2 / 4 / 8 at 3 clients
#   scripts/results.sh all       the three above
# Overrides: SEEDS="0 1 2", KS="3 20 50" (clients), RANKS="1 2 4 8", TUNE_GRID="method:lr ..."
# (default below). Each run writes results/table/<experiment>/<run>/<method>.csv and is skipped
# when already done; scripts/summarize_results.py turns them into the tables of docs/results.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

what="${1:-all}"
seeds=(${SEEDS:-0 1 2})
ks=(${KS:-3 20 50})
ranks=(${RANKS:-1 2 4 8})
exe=build/examples/federated_finetune
common=(--rounds 30 --eval-every 5 --no-save)

bash scripts/setup.sh
bash scripts/fetch_data.sh
cmake --preset default > /dev/null
cmake --build --preset default --target federated_finetune -j "$(nproc 2>/dev/null || echo 2)"

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
    run "results/table/tune/${m}_lr${lr}" --validation --clients 3 --methods "$m" --lr "$lr" --seed 0
  done
fi
if [ "$what" = clients ] || [ "$what" = all ]; then
  for k in "${ks[@]}"; do
    for s in "${seeds[@]}"; do run "results/table/clients/k${k}_s${s}" --clients "$k" --rank 2 --seed "$s"; done
  done
fi
if [ "$what" = ranks ] || [ "$what" = all ]; then
  for r in "${ranks[@]}"; do
    for s in "${seeds[@]}"; do run "results/table/ranks/r${r}_s${s}" --clients 3 --rank "$r" --seed "$s"; done
  done
fi
python3 scripts/summarize_results.py results/table
