#!/usr/bin/env bash
# ctest app.theory_secagg: linear_regression_theory with --secure-aggregation. For RoLoRA,
# FFA-LoRA, FedIT, FlexLoRA and FedEx-LoRA (the last two with their dense products under the
# masks), on the complete graph and on a random 4-regular one, and for the first three with
# client-level DP too (seeded noise; fixed and adaptive clipping), a masked run equals the same encoding without
# masks (--secagg-no-masks) in every column but the protocol's bytes; the aggregation error is
# empty (not available under masks); the masked run's upload holds the protocol's stages (more
# bytes than the unmasked inputs). FLoRA, FedSA-LoRA and gRPC are refused before any round, each
# with its reason (over MPI: tests/mpi/mpi_check.sh secagg).
#   usage: secagg_theory_check.sh PATH/TO/linear_regression_theory WORK_DIR
set -euo pipefail
theory=$1
work=$2
rm -rf "$work"
mkdir -p "$work"
common=(--rounds 8 --clients 10 --quiet)
fail() { echo "FAIL: $*"; exit 1; }
dp="--dp client --clip-norm 0.5 --noise-multiplier 0.3"
for method in rolora ffa fedit flexlora fedex; do
  variants=("" "--secagg-neighbours 4")
  # FlexLoRA and FedEx-LoRA (dense products under the masks) do not compose with client DP.
  [[ $method == flexlora || $method == fedex ]] ||
    variants+=("$dp" "$dp --adaptive-clip --clip-bit-noise 1")
  for graph in "${variants[@]}"; do
    tag="$method$(echo "$graph" | tr -d ' -.')"
    # shellcheck disable=SC2086
    "$theory" --method "$method" "${common[@]}" $graph --secure-aggregation \
      --csv "$work/$tag.masked.csv" > /dev/null
    # shellcheck disable=SC2086
    "$theory" --method "$method" "${common[@]}" $graph --secure-aggregation --secagg-no-masks \
      --csv "$work/$tag.clear.csv" > /dev/null
    # Every column but bytes_up and bytes_down (the 7th and 8th).
    cmp <(cut -d, -f1-6,9- "$work/$tag.masked.csv") <(cut -d, -f1-6,9- "$work/$tag.clear.csv") ||
      fail "$tag: the masked run differs from the unmasked encoding"
    [ "$(awk -F, 'NR > 2 && $5 != "" { n++ } END { print n + 0 }' "$work/$tag.masked.csv")" = 0 ] ||
      fail "$tag: an aggregation error under masks (it needs each client's product)"
    masked_up=$(tail -1 "$work/$tag.masked.csv" | cut -d, -f7)
    clear_up=$(tail -1 "$work/$tag.clear.csv" | cut -d, -f7)
    [ "$masked_up" -gt "$clear_up" ] || fail "$tag: masked upload $masked_up <= $clear_up"
    echo "ok $tag: identical but the bytes (up $masked_up masked, $clear_up unmasked)"
  done
done
# Refused before any round, the whole list at once: "every" starts with RoLoRA, which composes,
# and reaches FedSA-LoRA (its B per client would sit on the server in the clear).
for method in flora every; do
  if "$theory" --method "$method" --rounds 8 --clients 10 --secure-aggregation \
    > "$work/$method.log" 2>&1; then
    fail "$method ran under secure aggregation"
  fi
  ! grep -q "^rolora " "$work/$method.log" || fail "$method: RoLoRA's rounds ran before the refusal"
done
grep -q "flora's aggregate is neither a mean of the uploaded factors nor of their products" \
  "$work/flora.log" ||
  fail "FLoRA's refusal: $(cat "$work/flora.log")"
grep -q "fedsa keeps a factor per client" "$work/every.log" ||
  fail "FedSA-LoRA's refusal: $(cat "$work/every.log")"
if "$theory" --method rolora "${common[@]}" --secure-aggregation --transport grpc \
  > "$work/grpc.log" 2>&1; then
  fail "--secure-aggregation ran over gRPC"
fi
grep -q "runs in-process and over MPI so far" "$work/grpc.log" ||
  fail "gRPC's refusal: $(cat "$work/grpc.log")"
echo "ok: FLoRA, FedSA-LoRA and gRPC refused before any round"
