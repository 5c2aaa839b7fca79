#!/usr/bin/env bash
# ctest grpc.theory_*: the gRPC transport with real processes on localhost, against the in-process
# run of linear_regression_theory (docs/distributed.md, "Across organisations").
#   usage: grpc_check.sh MODE HAVE_GRPC PATH/TO/linear_regression_theory WORK_DIR SOURCE_DIR
#   MODE   identical    server + 2 client processes with certificates from make_certs.sh (one
#                       serving clients 0 and 2 by --roster), every method: the CSV and each
#                       method's final server state byte-identical to the in-process run
#          refusals     while the server waits for its clients: a plaintext client, a certificate
#                       from another CA, an expired certificate, client-1's certificate claiming
#                       client 0, a second stream for client 0 and another run's --eta are each
#                       refused (the client exits non-zero with the reason; the server logs the
#                       identity refusals) and the run then completes byte-identical
#          kill_client  client 1 killed with SIGKILL in round 0 is dropped at once, restarted it
#                       is served again from a later round, and the run completes
#          finetune_hf  federated_finetune (its path is then the third argument) on the tiny BERT of
#                       tests/data/hf_tiny, server + 3 client processes: CSVs the same but for the
#                       seconds and memory columns, adapters byte-identical to in-process
#          kill_server  the server SIGKILLs itself after iteration 5 (--crash-after), is restarted
#                       with --resume on the same port while the clients keep running: the CSV
#                       and final states are byte-identical to the uninterrupted in-process run
# Skipped ("rolora-skip:") where rolora was built without gRPC or openssl is missing.
set -euo pipefail
mode=$1
have_grpc=$2
exe=$3
work=$4/$mode
src=$5
if [ "$have_grpc" != 1 ]; then
  echo "rolora-skip: rolora was built without gRPC (ROLORA_ENABLE_GRPC; Debian: libgrpc++-dev)"
  exit 0
fi
command -v openssl > /dev/null || { echo "rolora-skip: openssl not found"; exit 0; }
rm -rf "$work"
mkdir -p "$work"
certs=$work/certs
bash "$src/scripts/make_certs.sh" "$certs" 127.0.0.1 3 > /dev/null
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2> /dev/null || true; done; }
trap cleanup EXIT
fail() { echo "FAIL: $*"; for f in "$work"/*.log; do echo "== $f"; cat "$f"; done; exit 1; }

tls() { echo --tls-ca "$certs/ca.pem" --tls-cert "$certs/$1.pem" --tls-key "$certs/$1.key"; }
# start_server LOG [FLAGS...]: the server in the background on a free port (or $port if set);
# sets $port and $server.
start_server() {
  local log=$1
  shift
  # shellcheck disable=SC2046
  "$exe" "${flags[@]}" --transport grpc --role server --listen "127.0.0.1:${port:-0}" \
    $(tls server) "$@" > "$log.out" 2> "$log" &
  server=$!
  pids+=("$server")
  for _ in $(seq 1 100); do
    if grep -q "grpc: listening on 127.0.0.1:" "$log"; then
      port=$(sed -n 's/.*grpc: listening on 127.0.0.1:\([0-9]*\).*/\1/p' "$log" | head -1)
      return
    fi
    kill -0 "$server" 2> /dev/null || fail "the server did not start"
    sleep 0.1
  done
  fail "the server did not listen within 10 s"
}
# client NAME IDS LOG [FLAGS...]: a client process in the background with NAME's certificate.
client() {
  local name=$1 ids=$2 log=$3
  shift 3
  # shellcheck disable=SC2046
  "$exe" "${flags[@]}" --transport grpc --role client --connect "127.0.0.1:$port" \
    --client-id "$ids" $(tls "$name") --connect-timeout 30 "$@" > "$log" 2>&1 &
  pids+=($!)
}
# refused LOG EXPECTED [ARGS...]: a client run in the foreground must fail with EXPECTED.
refused() {
  local log=$1 expected=$2
  shift 2
  set +e
  "$exe" "${flags[@]}" --transport grpc --role client --connect "127.0.0.1:$port" "$@" \
    > "$log" 2>&1
  local rc=$?
  set -e
  [ "$rc" -ne 0 ] || fail "$log: the client was not refused"
  grep -q -- "$expected" "$log" || fail "$log: no '$expected'"
}
# wait_for LOG PATTERN: until the log has a line matching PATTERN (30 s at most).
wait_for() {
  for _ in $(seq 1 300); do
    grep -q "$2" "$1" && return
    sleep 0.1
  done
  fail "no '$2' in $1 within 30 s"
}
final_state() { echo "$1/$2/$(cat "$1/$2/latest")/server.safetensors"; }
same() {  # same CSV and final server states as the in-process run
  cmp "$work/inprocess.csv" "$work/grpc.csv" || fail "the CSVs differ"
  for method in "${methods[@]}"; do
    cmp "$(final_state "$work/inprocess" "$method")" "$(final_state "$work/grpc" "$method")" ||
      fail "$method: the final server states differ"
  done
}
in_process() {
  "$exe" "${flags[@]}" --checkpoint-dir "$work/inprocess" --csv "$work/inprocess.csv" > /dev/null
}
wait_all() {  # the server and every client exit 0
  for p in "${pids[@]}"; do wait "$p" || fail "process $p exited with $?"; done
  pids=()
}

case $mode in
  identical)
    printf 'client-0 0,2\nclient-1 1\n' > "$work/roster"
    # roster_federation TAG: in process, then the server and two client processes (clients 0 and
    # 2 by the roster, client 1) with $flags; the CSVs and final server states must be the same.
    roster_federation() {
      rm -rf "$work/inprocess" "$work/grpc" "$work/inprocess.csv" "$work/grpc.csv"
      in_process
      port=''
      start_server "$work/server$1.log" --roster "$work/roster" --checkpoint-dir "$work/grpc" \
        --csv "$work/grpc.csv"
      client client-0 0,2 "$work/client02$1.log"
      client client-1 1 "$work/client1$1.log"
      wait_all
      same
    }
    flags=(--method every --rounds 4 --dim 16 --out-dim 4 --samples 100 --clients 3 --quiet
           --checkpoint-every 100)
    methods=(rolora ffa fedit fedsa flexlora flora fedex fedrot)
    roster_federation ""
    echo "gRPC with mutual TLS, 2 client processes (0,2 by roster; 1), 8 methods: byte-identical"
    # Client-level DP: the clip request travels in the download, the clip bit in the upload.
    flags=(--method rolora --rounds 3 --dim 16 --out-dim 4 --samples 100 --clients 3 --quiet
           --checkpoint-every 100 --dp client --sampling-rate 0.75 --noise-multiplier 0.8
           --clip-norm 0.05 --adaptive-clip --clip-bit-noise 1)
    methods=(rolora)
    roster_federation _dp
    echo "gRPC, client-level DP with adaptive clipping: byte-identical (epsilon column included)"
    # Sample-level DP-SGD: each client process takes the setting from the same flags.
    flags=(--method all --rounds 3 --local-steps 2 --batch-size 10 --dim 10 --out-dim 4
           --samples 100 --clients 3 --dp sample --noise-multiplier 1 --clip-norm 0.5 --quiet
           --checkpoint-every 100)
    methods=(rolora ffa fedit)
    roster_federation _dp_sample
    echo "gRPC, sample-level DP-SGD (--dp sample), 3 methods: byte-identical"
    ;;
  refusals)
    flags=(--method ffa --rounds 3 --dim 16 --out-dim 4 --samples 100 --clients 3 --quiet
           --checkpoint-every 100)
    methods=(ffa)
    in_process
    start_server "$work/server.log" --checkpoint-dir "$work/grpc" --csv "$work/grpc.csv"
    # TLS refusals look like an unreachable server to the client: it gives up after the timeout.
    refused "$work/plaintext.log" "no connection to 127.0.0.1:$port within --connect-timeout 2 s" \
      --client-id 0 --insecure --connect-timeout 2
    bash "$src/scripts/make_certs.sh" "$work/other_ca" 127.0.0.1 1 > /dev/null
    refused "$work/other_ca.log" "no connection to 127.0.0.1:$port within --connect-timeout 2 s" \
      --client-id 0 --tls-ca "$certs/ca.pem" --tls-cert "$work/other_ca/client-0.pem" \
      --tls-key "$work/other_ca/client-0.key" --connect-timeout 2
    # An expired client-0 certificate, signed by the right CA (openssl ca takes explicit dates).
    (
      cd "$certs"
      mkdir -p db && : > db/index && echo 1000 > db/serial
      printf '[ca]\ndefault_ca=d\n[d]\ndatabase=db/index\nserial=db/serial\nnew_certs_dir=db\npolicy=p\ndefault_md=sha256\n[p]\ncommonName=supplied\n' > ca.cnf
      openssl ecparam -name prime256v1 -genkey -noout -out expired.key 2> /dev/null
      openssl req -new -key expired.key -subj "/CN=client-0" -out expired.csr
      openssl ca -batch -config ca.cnf -cert ca.pem -keyfile ca.key -in expired.csr \
        -startdate 20200101000000Z -enddate 20200102000000Z -out expired.pem > /dev/null 2>&1
    )
    refused "$work/expired.log" "no connection to 127.0.0.1:$port within --connect-timeout 2 s" \
      --client-id 0 --tls-ca "$certs/ca.pem" --tls-cert "$certs/expired.pem" \
      --tls-key "$certs/expired.key" --connect-timeout 2
    # shellcheck disable=SC2046
    refused "$work/impostor.log" "refused this client: identity 'client-1' may not act as client 0" \
      --client-id 0 $(tls client-1)
    # shellcheck disable=SC2046
    refused "$work/other_run.log" "refused this client: this client's run is not the server's: --eta differs: server .*, client 0.25" \
      --client-id 0 $(tls client-0) --eta 0.25
    client client-0 0 "$work/client0.log"
    wait_for "$work/server.log" "connected as client 0"
    # shellcheck disable=SC2046
    refused "$work/twin.log" "refused this client: client 0 is already connected" \
      --client-id 0 $(tls client-0)
    client client-1 1 "$work/client1.log"
    client client-2 2 "$work/client2.log"
    wait_all
    [ "$(grep -c "Handshake failed" "$work/server.log")" -ge 3 ] ||
      fail "the server did not log three failed TLS handshakes"
    for line in "refused client-1 .*may not act as client 0" "refused client-0 .*--eta differs" \
                "refused client-0 .*client 0 is already connected"; do
      grep -q "$line" "$work/server.log" || fail "the server did not log '$line'"
    done
    same
    echo "plaintext, other CA, expired, impostor, other run, twin: refused; the run byte-identical"
    ;;
  kill_client)
    # --client-timeout also sets how long --slow-client sleeps (3 timeouts), so all take it.
    flags=(--method ffa --rounds 6 --dim 16 --out-dim 4 --samples 100 --clients 3 --quiet
           --client-timeout 2)
    start_server "$work/server.log" --csv "$work/grpc.csv"
    client client-0 0 "$work/client0.log"
    client client-1 1 "$work/client1.log" --slow-client 1  # holds round 0 (sleeps 6 s) ...
    victim=${pids[-1]}
    client client-2 2 "$work/client2.log" --slow-client 2  # ... as does client 2
    wait_for "$work/server.log" "connected as client 1"
    wait_for "$work/server.log" "connected as client 2"
    sleep 0.5  # client 1 has its download and trains (then sleeps)
    kill -9 "$victim"
    wait "$victim" 2> /dev/null || true
    pids=("${pids[@]/$victim/}")
    pids=("${pids[@]}")
    client client-1 1 "$work/client1_again.log"  # restarted, within round 0 (client 2 sleeps)
    for p in "${pids[@]}"; do [ -n "$p" ] && { wait "$p" || fail "process $p exited with $?"; }; done
    pids=()
    grep -q "round 0: client 1 dropped: its stream was lost after its download" "$work/server.log" ||
      fail "client 1 was not dropped at once in round 0"
    [ "$(grep -c "connected as client 1" "$work/server.log")" -eq 2 ] ||
      fail "client 1 did not connect twice"
    if grep -q "round [1-9]: client 1 dropped" "$work/server.log"; then
      fail "the restarted client 1 was not served in later rounds"
    fi
    [ "$(wc -l < "$work/grpc.csv")" -eq 8 ] || fail "the CSV is not complete"
    echo "client 1 killed in round 0: dropped at once; restarted: served from round 1; run complete"
    ;;
  finetune_hf)
    hf=$src/tests/data/hf_tiny
    flags=(--model "$hf/bert" --train "$hf/app/classify_train.csv" --test "$hf/app/classify_test.csv"
           --max-len 24 --clients 3 --rounds 2 --local-steps 2 --batch 4 --methods fedit,rolora
           --threads 1 --base-precision fp32)
    "$exe" "${flags[@]}" --out "$work/inprocess" > "$work/inprocess.log"
    start_server "$work/server.log" --out "$work/grpc"
    for n in 0 1 2; do client "client-$n" "$n" "$work/client$n.log"; done
    wait_all
    for method in fedit rolora; do
      cmp <(cut -d, -f1-10 "$work/inprocess/$method.csv") <(cut -d, -f1-10 "$work/grpc/$method.csv") ||
        fail "$method: the CSVs differ"
      cmp "$work/inprocess/${method}_adapter/adapter_model.safetensors" \
        "$work/grpc/${method}_adapter/adapter_model.safetensors" || fail "$method: adapters differ"
    done
    echo "federated_finetune --model (tiny BERT) over gRPC with mutual TLS: CSVs (but seconds) and adapters byte-identical"
    ;;
  kill_server)
    flags=(--rounds 8 --dim 20 --out-dim 5 --samples 200 --clients 3 --checkpoint-every 3 --quiet)
    methods=(rolora ffa fedit)
    in_process
    start_server "$work/killed.log" --checkpoint-dir "$work/grpc" --csv "$work/grpc.csv" \
      --crash-after 5
    killed=$server
    client client-0 0 "$work/client0.log"
    client client-1 1 "$work/client1.log"
    client client-2 2 "$work/client2.log"
    set +e
    wait "$killed"
    rc=$?
    set -e
    [ "$rc" -eq 137 ] || fail "the server should have died by SIGKILL after iteration 5 (exit $rc)"
    [ ! -e "$work/grpc.csv" ] || fail "the killed server wrote its CSV"
    pids=("${pids[@]/$killed/}")
    pids=("${pids[@]}")
    start_server "$work/resumed.log" --resume "$work/grpc" --checkpoint-dir "$work/grpc" \
      --csv "$work/grpc.csv"
    for p in "${pids[@]}"; do [ -n "$p" ] && { wait "$p" || fail "process $p exited with $?"; }; done
    pids=()
    grep -q "resumed after iteration 3 " "$work/resumed.log.out" || fail "no resume"
    same
    echo "server SIGKILLed after iteration 5, restarted with --resume, clients kept: byte-identical"
    ;;
  *)
    echo "unknown mode $mode"
    exit 2
    ;;
esac
