#!/usr/bin/env bash
# What the gRPC transport costs (docs/distributed.md, "Cost"), with linear_regression_theory on
# localhost; every run's CSV is compared with the in-process one (identical bits or it stops).
#   bash bench/grpc_cost.sh [BUILD_DIR]      (default build/)
# On a VM where page faults are dear, glibc's fresh mmap for every buffer above 32 MiB dominates
# both transports and in-process alike; compare with
#   MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=17179869184 bash bench/grpc_cost.sh
# 1. Large messages: FedIT, one client, d = 10^6, r = 9 (69 MiB up and down per round),
#    3 rounds: in-process, gRPC plaintext and gRPC with mutual TLS; the transfer rate is the
#    bytes moved over the extra seconds. Beside it `openssl speed -evp` for the ciphers TLS 1.3
#    uses and the cipher this server negotiates (openssl s_client).
# 2. Many processes: FFA-LoRA, 50 clients each in its own process, 5 rounds: the server's peak
#    RSS against a 2-client run, and the wall time.
# 3. The main job (federated_finetune, built-in model, 20 clients, RoLoRA, 4 rounds; needs the
#    corpus of scripts/fetch_data.sh): in-process on 2 threads, MPI -np 3 and gRPC with a server
#    and 2 client processes (10 ids each), each client 1 thread: seconds per round.
set -euo pipefail
build=${1:-build}
exe=$build/apps/linear_regression_theory
work=$(mktemp -d)
trap 'pkill -P $$ 2> /dev/null || true; rm -rf "$work"' EXIT
bash "$(dirname "$0")/../scripts/make_certs.sh" "$work/certs" 127.0.0.1 50 > /dev/null
c=$work/certs
lscpu | grep -E "Model name|^CPU\(s\)" | sed 's/  */ /g'

now() { date +%s.%N; }
# run_grpc TLS|PLAIN CLIENTS FLAGS...: server + one process per client; prints seconds and the
# server's peak RSS (KiB).
run_grpc() {
  local mode=$1 clients=$2
  shift 2
  local sec=(--insecure)
  [ "$mode" = TLS ] && sec=(--tls-ca "$c/ca.pem" --tls-cert "$c/server.pem" --tls-key "$c/server.key")
  local t0
  t0=$(now)
  /usr/bin/time -f "%M" -o "$work/rss" "$exe" "$@" --transport grpc --role server \
    --listen 127.0.0.1:0 "${sec[@]}" --csv "$work/grpc.csv" > /dev/null 2> "$work/server.log" &
  local server=$!
  local port=""
  while [ -z "$port" ]; do
    sleep 0.05
    port=$(sed -n 's/.*listening on 127.0.0.1:\([0-9]*\).*/\1/p' "$work/server.log")
  done
  local pids=()
  for ((n = 0; n < clients; n++)); do
    [ "$mode" = TLS ] && sec=(--tls-ca "$c/ca.pem" --tls-cert "$c/client-$n.pem" --tls-key "$c/client-$n.key")
    "$exe" "$@" --transport grpc --role client --connect "127.0.0.1:$port" --client-id "$n" \
      "${sec[@]}" > /dev/null 2>&1 &
    pids+=($!)
  done
  wait "$server"
  for p in "${pids[@]}"; do wait "$p"; done
  echo "$(echo "$(now) - $t0" | bc) $(cat "$work/rss")"
}
in_process() {
  local t0
  t0=$(now)
  "$exe" "$@" --csv "$work/inprocess.csv" > /dev/null
  echo "$(echo "$(now) - $t0" | bc)"
}
same() { cmp "$work/inprocess.csv" "$work/grpc.csv"; }

echo "== 1. large messages (69 MiB each way per round, 3 rounds)"
big=(--method fedit --rounds 3 --dim 1000000 --out-dim 9 --rank 9 --samples 9 --clients 1 --quiet)
t_in=$(in_process "${big[@]}")
read -r t_plain _ < <(run_grpc PLAIN 1 "${big[@]}")
same
read -r t_tls _ < <(run_grpc TLS 1 "${big[@]}")
same
bytes=$(tail -1 "$work/inprocess.csv" | awk -F, '{print $7 + $8}')
echo "in-process $t_in s; gRPC plaintext $t_plain s; gRPC mutual TLS $t_tls s; $bytes bytes moved"
echo "transfer rate: plaintext $(echo "$bytes / ($t_plain - $t_in) / 1000000" | bc) MB/s," \
  "TLS $(echo "$bytes / ($t_tls - $t_in) / 1000000" | bc) MB/s"
# The cipher this server negotiates with a client certificate (TLS 1.3 over HTTP/2).
"$exe" "${big[@]}" --transport grpc --role server --listen 127.0.0.1:0 --tls-ca "$c/ca.pem" \
  --tls-cert "$c/server.pem" --tls-key "$c/server.key" > /dev/null 2> "$work/probe.log" &
probe=$!
sleep 1
port=$(sed -n 's/.*listening on 127.0.0.1:\([0-9]*\).*/\1/p' "$work/probe.log")
echo | openssl s_client -connect "127.0.0.1:$port" -alpn h2 -CAfile "$c/ca.pem" \
  -cert "$c/client-0.pem" -key "$c/client-0.key" 2> /dev/null | grep -a -E "^New,|Protocol  *:" || true
kill "$probe" 2> /dev/null || true
echo "openssl speed -evp, 16 KiB blocks, one core (kB/s):"
for cipher in aes-128-gcm aes-256-gcm chacha20-poly1305; do
  openssl speed -seconds 2 -bytes 16384 -evp "$cipher" 2> /dev/null | tail -1
done

echo "== 2. many client processes (FFA-LoRA, 5 rounds, d = 100, k = 10)"
small=(--method ffa --rounds 5 --dim 100 --out-dim 10 --rank 2 --samples 200 --quiet)
for n in 2 50; do
  in_process "${small[@]}" --clients "$n" > /dev/null
  read -r t rss < <(run_grpc TLS "$n" "${small[@]}" --clients "$n")
  same
  echo "$n client processes: $t s, server peak RSS $((rss / 1024)) MiB"
done

finetune=$build/apps/federated_finetune
if [ -x "$finetune" ] && [ -d .cache/data/spam-assassin ]; then
  echo "== 3. the main job: 20 clients, RoLoRA, 4 rounds"
  job=(--clients 20 --rounds 4 --methods rolora --eval-every 4)
  per_round() { grep -o "round   4/4.*" "$1" | grep -o "[0-9.]* s" | head -1; }
  "$finetune" "${job[@]}" --threads 2 --out "$work/ft_in" > "$work/ft_in.log"
  echo "in-process, 2 threads: $(per_round "$work/ft_in.log") for 4 rounds"
  if command -v mpirun > /dev/null; then
    OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 \
      OMPI_MCA_btl_vader_single_copy_mechanism=none mpirun --oversubscribe -np 3 "$finetune" \
      "${job[@]}" --threads 1 --transport mpi --out "$work/ft_mpi" > "$work/ft_mpi.log"
    echo "MPI -np 3, 1 thread per client rank: $(per_round "$work/ft_mpi.log") for 4 rounds"
  fi
  printf 'client-0 0,2,4,6,8,10,12,14,16,18\nclient-1 1,3,5,7,9,11,13,15,17,19\n' > "$work/roster"
  "$finetune" "${job[@]}" --threads 1 --transport grpc --listen 127.0.0.1:0 --roster "$work/roster" \
    --tls-ca "$c/ca.pem" --tls-cert "$c/server.pem" --tls-key "$c/server.key" \
    --out "$work/ft_grpc" > "$work/ft_grpc.log" 2> "$work/ft_server.log" &
  server=$!
  port=""
  while [ -z "$port" ]; do
    sleep 0.1
    port=$(sed -n 's/.*listening on 127.0.0.1:\([0-9]*\).*/\1/p' "$work/ft_server.log")
  done
  for n in 0 1; do
    ids=$(sed -n "$((n + 1))p" "$work/roster" | cut -d' ' -f2)
    "$finetune" "${job[@]}" --threads 1 --transport grpc --role client --connect "127.0.0.1:$port" \
      --client-id "$ids" --tls-ca "$c/ca.pem" --tls-cert "$c/client-$n.pem" \
      --tls-key "$c/client-$n.key" > /dev/null 2>&1 &
  done
  wait
  echo "gRPC mutual TLS, 2 client processes: $(per_round "$work/ft_grpc.log") for 4 rounds"
  cmp "$work/ft_in/rolora_adapter/adapter_model.safetensors" \
    "$work/ft_grpc/rolora_adapter/adapter_model.safetensors"
fi
