#!/usr/bin/env bash
# One federated LoRA round of the transformer, rolora against the PyTorch reference, in the same
# run on the same machine: prints seconds per round for both and their ratio. Arguments go to
# both programs (same flags), e.g.  bash bench/run_round.sh --factors AB --threads 2
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup.sh
# The reference needs Debian's PyTorch with an optimised BLAS (not part of the test set-up).
for pkg in python3-torch libopenblas0-pthread; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    SUDO=(); [ "$(id -u)" -ne 0 ] && SUDO=(sudo)
    "${SUDO[@]}" apt-get update && "${SUDO[@]}" apt-get install -y --no-install-recommends python3-torch libopenblas0-pthread
    break
  fi
done

cmake --preset bench > /dev/null
cmake --build --preset bench --target rolora_transformer_round -j "$(nproc 2>/dev/null || echo 2)"

rolora_out="$(build-bench/bench/rolora_transformer_round "$@")"
echo "$rolora_out"
torch_out="$(/usr/bin/python3 bench/pytorch_reference.py "$@")"
echo "$torch_out"
ours="$(echo "$rolora_out" | awk '/^seconds_per_round/ {print $2}')"
theirs="$(echo "$torch_out" | awk '/^seconds_per_round/ {print $2}')"
awk -v a="$ours" -v b="$theirs" 'BEGIN {
  printf "\nseconds per round: rolora %.3f, PyTorch %.3f -> rolora is %.1fx faster\n", a, b, b / a }'
