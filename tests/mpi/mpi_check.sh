#!/usr/bin/env bash
# ctest mpi.*: the MPI transport against the in-process federation (docs/distributed.md).
#   usage: mpi_check.sh MODE HAVE_MPI PATH/TO/EXAMPLE WORK_DIR [CORPUS_DIR]
#   MODE   identical_np3  mpirun -np 3 (2 client ranks, 3 clients), every method: the CSV and each
#                         method's final server state byte-identical to the in-process run
#          identical_np4  mpirun -np 4 with 2 clients (a client rank idles), the same
#          dp_sample_np3  -np 3 with sample-level DP-SGD (--dp sample): CSV and states identical
#          garbage        client 1 uploads garbage: with --on-bad-update drop it is dropped with a
#                         logged reason and the rounds complete; with fail the job stops
#          timeout        client 1 answers round 0 late (--slow-client, --client-timeout 1): dropped
#                         from that round with the reason, its late upload discarded by its round
#          resume         kill -9 of rank 0 mid-run (--crash-after), mpirun --resume: byte-identical
#          dp             client-level DP (Poisson sampling, adaptive clipping) under mpirun -np 3:
#                         byte-identical to in-process (epsilon column included); kill -9 of rank 0
#                         and --resume over MPI spend exactly the same budget, byte for byte
#          finetune_np3   federated_finetune, a tiny configuration, mpirun -np 3 against in-process:
#                         CSVs identical but for the wall-time column, adapter files identical
#                         (skipped without the SpamAssassin corpus in CORPUS_DIR)
#          finetune_dp_np3  the same under client-level DP (Poisson sampling, adaptive clipping)
#          finetune_hf_np3  the same with --model on the tiny BERT of tests/data/hf_tiny (the
#                         fifth argument is that directory)
#          secagg         --secure-aggregation (rolora/secagg/mpi.hpp): mpirun -np 3 byte-identical
#                         to in-process on the complete graph, a 2-regular graph, without masks,
#                         for FlexLoRA and FedEx-LoRA (dense products) and under client-level DP
#                         with adaptive clipping; with clients silent from
#                         each protocol stage on (--secagg-drop, --client-timeout) under -np 4,
#                         identical to in-process with the same drops, each silence logged
#          finetune_hf_secagg_np3  finetune_hf_np3 under --secure-aggregation
#          (secagg modes are skipped in a build without libsodium)
# Skipped ("rolora-skip:") where mpirun is missing or rolora was built without MPI.
set -euo pipefail
mode=$1
have_mpi=$2
exe=$3
work=$4/$mode
if [ "$have_mpi" != 1 ]; then
  echo "rolora-skip: rolora was built without MPI (ROLORA_ENABLE_MPI; Debian: libopenmpi-dev)"
  exit 0
fi
if [[ "$mode" = finetune_np3 || "$mode" = finetune_dp_np3 ]] && [ ! -d "${5:-}/spam-assassin/data" ]; then
  echo "rolora-skip: no SpamAssassin corpus under ${5:-} (run scripts/fetch_data.sh)"
  exit 0
fi
if ! command -v mpirun > /dev/null 2>&1; then
  echo "rolora-skip: mpirun not found (Debian: openmpi-bin)"
  exit 0
fi
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_btl_vader_single_copy_mechanism=none  # containers: no CMA between ranks
mpi() { local np=$1; shift; mpirun --oversubscribe -np "$np" "$exe" --transport mpi "$@"; }
rm -rf "$work"
mkdir -p "$work"
final_state() { echo "$1/$2/$(cat "$1/$2/latest")/server.safetensors"; }
same() {  # same CSV and final server states as the in-process run in $work/inprocess
  cmp "$work/inprocess.csv" "$1.csv"
  for method in "${methods[@]}"; do
    cmp "$(final_state "$work/inprocess" "$method")" "$(final_state "$1" "$method")"
  done
}

# killed_and_resumed DIR AFTER FROM: mpirun -np 3 with $flags checkpointing into DIR, rank 0
# killed by SIGKILL after iteration AFTER (--crash-after), then --resume from DIR, which must say
# it resumed after iteration FROM; CSV (DIR.csv) and final server states as in process.
killed_and_resumed() {
  local dir=$1 after=$2 from=$3 rc
  set +e
  mpi 3 "${flags[@]}" --checkpoint-dir "$dir" --csv "$dir.csv" --crash-after "$after" \
    > "$dir.killed.log" 2>&1
  rc=$?
  set -e
  if [ "$rc" -eq 0 ] || [ -e "$dir.csv" ]; then
    echo "FAIL: rank 0 should have died by SIGKILL after iteration $after (exit $rc)"
    exit 1
  fi
  mpi 3 "${flags[@]}" --resume "$dir" --csv "$dir.csv" > "$dir.resumed.log"
  grep -q "resumed after iteration $from " "$dir.resumed.log" || { cat "$dir.resumed.log"; exit 1; }
  same "$dir"
}

# federated_finetune with "$@" in process and under mpirun -np 3 (methods fedit, rolora): CSVs the
# same but for the seconds and memory columns (epsilon included under DP), adapters
# byte-identical.
finetune_in_process_and_np3() {
  "$exe" "$@" --out "$work/inprocess" > "$work/inprocess.log"
  mpi 3 "$@" --out "$work/mpi" > "$work/mpi.log"
  for method in fedit rolora; do
    cmp <(cut -d, -f1-10,13- "$work/inprocess/$method.csv") \
      <(cut -d, -f1-10,13- "$work/mpi/$method.csv")
    cmp "$work/inprocess/${method}_adapter/adapter_model.safetensors" \
      "$work/mpi/${method}_adapter/adapter_model.safetensors"
  done
}

case $mode in
  identical_np3 | identical_np4)
    np=${mode#identical_np}
    clients=$((np == 3 ? 3 : 2))
    flags=(--method every --rounds 4 --dim 16 --out-dim 4 --samples 100 --clients "$clients"
           --quiet --checkpoint-every 100)
    methods=(rolora ffa fedit fedsa flexlora flora fedex fedrot)
    "$exe" "${flags[@]}" --checkpoint-dir "$work/inprocess" --csv "$work/inprocess.csv" > /dev/null
    mpi "$np" "${flags[@]}" --checkpoint-dir "$work/mpi" --csv "$work/mpi.csv" > "$work/mpi.log"
    same "$work/mpi"
    echo "mpirun -np $np, $clients clients, 8 methods: CSV and final server states byte-identical"
    ;;
  dp_sample_np3)
    # Sample-level DP-SGD: every rank takes the setting from the same flags (nothing on the wire),
    # Poisson batches and noise from (seed, round, client, step) streams: the same bits.
    flags=(--method all --rounds 4 --local-steps 2 --batch-size 10 --dim 10 --out-dim 4
           --samples 100 --clients 3 --dp sample --noise-multiplier 1 --clip-norm 0.5 --quiet
           --checkpoint-every 100)
    methods=(rolora ffa fedit)
    "$exe" "${flags[@]}" --checkpoint-dir "$work/inprocess" --csv "$work/inprocess.csv" > /dev/null
    mpi 3 "${flags[@]}" --checkpoint-dir "$work/mpi" --csv "$work/mpi.csv" > "$work/mpi.log"
    same "$work/mpi"
    echo "mpirun -np 3, --dp sample, 3 methods: CSV (epsilon column included) and final server" \
      "states byte-identical"
    ;;
  garbage)
    flags=(--rounds 3 --dim 16 --out-dim 4 --samples 100 --clients 3 --quiet)
    mpi 3 "${flags[@]}" --on-bad-update drop --garbage-client 1 --csv "$work/drop.csv" \
      > "$work/drop.log" 2>&1
    for round in 0 1 5; do
      if ! grep -q "round $round: client 1 dropped: client 1: .*safetensors" "$work/drop.log"; then
        echo "FAIL: no logged drop of client 1 in round $round:"
        cat "$work/drop.log"
        exit 1
      fi
    done
    [ "$(wc -l < "$work/drop.csv")" -eq 13 ] || { echo "FAIL: the CSV is not complete"; exit 1; }
    set +e
    mpi 3 "${flags[@]}" --garbage-client 1 --csv "$work/fail.csv" > "$work/fail.log" 2>&1
    rc=$?
    set -e
    if [ "$rc" -eq 0 ] || ! grep -q "round 0: .*client 1" "$work/fail.log" || [ -e "$work/fail.csv" ]; then
      echo "FAIL: with --on-bad-update fail the job should stop at round 0 (exit $rc):"
      cat "$work/fail.log"
      exit 1
    fi
    echo "garbage from client 1: dropped with its reason (drop), the job stopped (fail)"
    ;;
  timeout)
    flags=(--method ffa --rounds 4 --dim 16 --out-dim 4 --samples 100 --clients 3 --quiet)
    mpi 3 "${flags[@]}" --client-timeout 1 --slow-client 1 --csv "$work/slow.csv" > "$work/slow.log" 2>&1
    for line in "round 0: client 1 dropped: no upload within --client-timeout 1 s" \
                "a late upload of round 0 from client 1 discarded"; do
      grep -q "$line" "$work/slow.log" || { echo "FAIL: no '$line' in the log:"; cat "$work/slow.log"; exit 1; }
    done
    [ "$(wc -l < "$work/slow.csv")" -eq 6 ] || { echo "FAIL: the CSV is not complete"; exit 1; }
    echo "a client late in round 0: dropped from it, its late upload discarded, the run completed"
    ;;
  resume)
    flags=(--rounds 8 --dim 20 --out-dim 5 --samples 200 --clients 4 --checkpoint-every 3 --quiet)
    methods=(rolora ffa fedit)
    "$exe" "${flags[@]}" --checkpoint-dir "$work/inprocess" --csv "$work/inprocess.csv" > /dev/null
    killed_and_resumed "$work/mpi" 5 3
    echo "mpirun -np 3 killed after iteration 5, resumed over MPI: byte-identical"
    ;;
  dp)
    flags=(--method rolora --rounds 6 --dim 16 --out-dim 4 --samples 100 --clients 4 --quiet
           --checkpoint-every 2 --dp client --sampling-rate 0.75 --noise-multiplier 0.8
           --clip-norm 0.05 --adaptive-clip --clip-bit-noise 1)
    methods=(rolora)
    "$exe" "${flags[@]}" --checkpoint-dir "$work/inprocess" --csv "$work/inprocess.csv" > /dev/null
    head -1 "$work/inprocess.csv" | grep -q ',epsilon$' || { echo "FAIL: no epsilon column"; exit 1; }
    mpi 3 "${flags[@]}" --checkpoint-dir "$work/mpi" --csv "$work/mpi.csv" > "$work/mpi.log"
    same "$work/mpi"
    killed_and_resumed "$work/killed" 3 2
    echo "client-level DP over mpirun -np 3: byte-identical; killed after iteration 3 and resumed: the same bits and budget"
    ;;
  finetune_np3)
    flags=(--clients 3 --rounds 2 --local-steps 2 --batch 8 --max-len 48 --pretrain-steps 20
           --methods fedit,rolora --threads 1 --data-dir "$5" --checkpoint "$work/model.safetensors")
    finetune_in_process_and_np3 "${flags[@]}"
    echo "federated_finetune over mpirun -np 3: CSVs (but seconds) and adapters byte-identical"
    ;;
  finetune_dp_np3)
    flags=(--clients 3 --rounds 3 --local-steps 2 --batch 8 --max-len 48 --pretrain-steps 20
           --methods fedit,rolora --threads 1 --data-dir "$5" --checkpoint "$work/model.safetensors"
           --dp client --sampling-rate 0.8 --noise-multiplier 0.5 --clip-norm 0.05 --adaptive-clip
           --clip-bit-noise 1)
    finetune_in_process_and_np3 "${flags[@]}"
    head -1 "$work/mpi/rolora.csv" | grep -q ',epsilon$' || { echo "FAIL: no epsilon column"; exit 1; }
    echo "federated_finetune --dp client over mpirun -np 3: CSVs (epsilon included) and adapters byte-identical"
    ;;
  finetune_hf_np3)  # $5: tests/data/hf_tiny
    flags=(--model "$5/bert" --train "$5/app/classify_train.csv" --test "$5/app/classify_test.csv"
           --max-len 24 --clients 3 --rounds 2 --local-steps 2 --batch 4 --methods fedit,rolora
           --threads 1 --base-precision fp32)
    finetune_in_process_and_np3 "${flags[@]}"
    echo "federated_finetune --model (tiny BERT) over mpirun -np 3: CSVs (but seconds) and adapters byte-identical"
    ;;
  secagg)
    common=(--rounds 2 --dim 16 --out-dim 4 --samples 100 --quiet --secure-aggregation)
    if "$exe" "${common[@]}" --clients 3 2>&1 | grep -q "has no libsodium"; then
      echo "rolora-skip: rolora was built without libsodium (Debian: libsodium-dev)"
      exit 0
    fi
    # in_process_and_mpi NP TAG FLAGS...: the same CSV in-process and under mpirun -np NP.
    in_process_and_mpi() {
      local np=$1 tag=$2
      shift 2
      "$exe" "${common[@]}" "$@" --csv "$work/$tag.inprocess.csv" > "$work/$tag.inprocess.log" 2>&1
      mpi "$np" "${common[@]}" "$@" --csv "$work/$tag.mpi.csv" > "$work/$tag.mpi.log" 2>&1
      cmp "$work/$tag.inprocess.csv" "$work/$tag.mpi.csv" ||
        { echo "FAIL: $tag differs over MPI"; cat "$work/$tag.mpi.log"; exit 1; }
      echo "ok $tag: byte-identical over mpirun -np $np"
    }
    in_process_and_mpi 3 complete --method rolora --clients 6
    in_process_and_mpi 3 regular2 --method ffa --clients 6 --secagg-neighbours 2
    in_process_and_mpi 3 no_masks --method fedit --clients 6 --secagg-no-masks
    in_process_and_mpi 3 flexlora --method flexlora --clients 6  # dense products too
    in_process_and_mpi 3 fedex --method fedex --clients 6 --secagg-neighbours 2
    in_process_and_mpi 3 dp --method rolora --clients 6 --dp client --clip-norm 0.5 \
      --noise-multiplier 0.3 --adaptive-clip --clip-bit-noise 1
    drops=(--secagg-drop 1:advertise,2:share_keys,3:masked_input,4:unmask --client-timeout 0.5)
    in_process_and_mpi 4 drops --method rolora --clients 10 "${drops[@]}"
    in_process_and_mpi 4 drops_regular --method rolora --clients 12 --secagg-neighbours 6 \
      --secagg-threshold 3 "${drops[@]}"
    for line in "client 1 silent at ready" "client 2 silent at share keys" \
                "client 3 silent at masked input" "client 4 silent at unmask"; do
      grep -q "round 3: $line" "$work/drops.mpi.log" ||
        { echo "FAIL: no 'round 3: $line' in the log:"; cat "$work/drops.mpi.log"; exit 1; }
    done
    echo "secure aggregation over MPI: identical to in-process, dropouts at every stage included"
    ;;
  finetune_hf_secagg_np3)  # $5: tests/data/hf_tiny
    flags=(--model "$5/bert" --train "$5/app/classify_train.csv" --test "$5/app/classify_test.csv"
           --max-len 24 --clients 3 --rounds 2 --local-steps 2 --batch 4 --methods fedit,rolora
           --threads 1 --base-precision fp32 --secure-aggregation)
    if "$exe" "${flags[@]}" --out "$work/probe" 2>&1 | grep -q "has no libsodium"; then
      echo "rolora-skip: rolora was built without libsodium (Debian: libsodium-dev)"
      exit 0
    fi
    finetune_in_process_and_np3 "${flags[@]}"
    echo "federated_finetune --model --secure-aggregation over mpirun -np 3: CSVs (but seconds)" \
      "and adapters byte-identical"
    ;;
  *)
    echo "unknown mode $mode"
    exit 2
    ;;
esac
