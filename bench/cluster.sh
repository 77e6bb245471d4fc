#!/usr/bin/env bash
# The cluster's figures of BENCHMARKS.md: one nats-server (JetStream, a fresh store), one ingest
# fed by the bench source (config/bench.toml) and edges, all on this machine with the load
# generator. Results: bench/results/cluster-<point>.json, one JSON line per run, and a summary.
#
#   bench/cluster.sh            # all points
#   bench/cluster.sh c1         # some of them
#
# C1 deliveries/s: two edges with 500 subscribers each against one process (--role all) with
#    1,000, at the same event rates (10 s each)
# C2 publish-to-delivery latency at low load (10 events/s, 100 subscribers): through the stream
#    (published_at is the ingest's publish time) against one process; median of three runs
# C3 the stream's fan-out cost: nats-server's CPU time per message per consumer, from 1, 2, 4
#    and 8 edges with no clients at 2,000 events/s (20 s each)
# C4 the ingest's publish ceiling: acks/s with the bench source far above it (C4_RATE, 100,000
#    events/s unless set)
set -euo pipefail
cd "$(dirname "$0")/.."
ulimit -n 200000 2>/dev/null || ulimit -n 65536 2>/dev/null || true
cargo build --release --quiet --bin dexpulse --bin loadgen
command -v nats-server >/dev/null || { echo "nats-server is needed (apt-get install nats-server)" >&2; exit 69; }
mkdir -p bench/results
DEX=${DEX:-target/release/dexpulse}
LOAD=target/release/loadgen
BASE=${BENCH_PORT:-18800}
NATS_PORT=$((BASE + 99))
STORE=$(mktemp -d)
SUB='{"op":"subscribe","channel":"signals"}'
points=("$@")
[ ${#points[@]} -eq 0 ] && points=(c1 c2 c3 c4)

# The shipped NATS configuration (users and permissions) on the bench's port and store, and the
# cluster's keys: the figures include the signatures and their checks.
KEYS="$STORE.keys"
rm -rf "$KEYS"; "$DEX" keygen --out "$KEYS" >/dev/null
export DEXPULSE_INGEST_PASSWORD=bench-ingest DEXPULSE_EDGE_PASSWORD=bench-edge
pids=()
edges_waiting=()
nats_pid=""
start_nats() {
  rm -rf "$STORE"; mkdir -p "$STORE"
  sed -e "s#^listen:.*#listen: 127.0.0.1:$NATS_PORT#" -e "s#store_dir:.*#store_dir: \"$STORE\"#" \
    config/nats/dexpulse.conf > "$STORE.conf"
  nats-server -c "$STORE.conf" >/dev/null 2>&1 &
  nats_pid=$!
  for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/$NATS_PORT) 2>/dev/null && return; sleep 0.05; done
  echo "nats-server did not start" >&2; exit 1
}
wait_ready() { # port
  for _ in $(seq 400); do curl -sf http://127.0.0.1:$1/readyz >/dev/null 2>&1 && return; sleep 0.05; done
  echo "127.0.0.1:$1 not ready: $(curl -s http://127.0.0.1:$1/readyz)" >&2; exit 1
}
start() { # role port rate; an edge is ready only once an ingest has created the stream
  local auth=()
  case "$1" in
    ingest) auth=(DEXPULSE_CLUSTER__URL=nats://ingest:bench-ingest@127.0.0.1:$NATS_PORT DEXPULSE_CLUSTER__SIGNING_KEY_FILE="$KEYS/signing.key") ;;
    edge) auth=(DEXPULSE_CLUSTER__URL=nats://edge:bench-edge@127.0.0.1:$NATS_PORT DEXPULSE_CLUSTER__VERIFY_KEY_FILE="$KEYS/verify.key") ;;
  esac
  env DEXPULSE_SOURCE__BENCH__EVENTS_PER_SECOND="$3" "${auth[@]}" RUST_LOG=warn \
    "$DEX" serve --config config/bench.toml --role "$1" --bind 127.0.0.1:"$2" >/dev/null 2>&1 &
  pids+=($!)
  if [ "$1" = edge ]; then edges_waiting+=("$2"); return; fi
  wait_ready "$2"
  for e in "${edges_waiting[@]}"; do wait_ready "$e"; done
  edges_waiting=()
}
stop_all() {
  for p in "${pids[@]}"; do kill -INT "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
  if [ -n "$nats_pid" ]; then kill "$nats_pid" 2>/dev/null || true; wait "$nats_pid" 2>/dev/null || true; nats_pid=""; fi
}
trap 'stop_all; rm -rf "$STORE" "$STORE.conf" "$KEYS"' EXIT
field() { python3 -c "import json,sys; d=json.loads(sys.stdin.read()); print($1)"; }
cpu_ticks() { awk '{print $14 + $15}' /proc/"$1"/stat; }
metric() { curl -s http://127.0.0.1:$1/metrics | awk -v m="$2" '$1 == m {print $2}'; }

for p in "${points[@]}"; do
  case $p in
  c1)
    : >bench/results/cluster-c1.json
    for rate in 100 250 450 650; do
      start "all" $BASE "$rate"
      one=$("$LOAD" --url ws://127.0.0.1:$BASE/v1/ws --connections 1000 --ramp-per-sec 2000 --subscribe "$SUB" --duration 10 --source-addresses 4)
      stop_all
      start_nats
      start "edge" $((BASE + 1)) 0.001
      start "edge" $((BASE + 2)) 0.001
      start "ingest" $((BASE + 3)) "$rate"
      "$LOAD" --url ws://127.0.0.1:$((BASE + 1))/v1/ws --connections 500 --ramp-per-sec 1000 --subscribe "$SUB" --duration 10 --source-addresses 2 >/tmp/cluster-a.json &
      la=$!
      "$LOAD" --url ws://127.0.0.1:$((BASE + 2))/v1/ws --connections 500 --ramp-per-sec 1000 --subscribe "$SUB" --duration 10 --source-addresses 2 >/tmp/cluster-b.json
      wait $la
      stop_all
      a=$(cat /tmp/cluster-a.json); b=$(cat /tmp/cluster-b.json)
      echo "{\"rate\":$rate,\"one_process\":$one,\"edge_a\":$a,\"edge_b\":$b}" >>bench/results/cluster-c1.json
      echo "C1 rate=$rate/s: one process $(echo "$one" | field '"%s deliveries/s p50=%sms p99=%sms" % (d["deliveries_per_s"], d["latency_ms"]["p50"], d["latency_ms"]["p99"])');" \
        "two edges $(python3 -c "
import json
a=json.loads('''$a'''); b=json.loads('''$b''')
print('%d deliveries/s (A %s p99=%sms, B %s p99=%sms)' % (a['deliveries_per_s']+b['deliveries_per_s'], a['deliveries_per_s'], a['latency_ms']['p99'], b['deliveries_per_s'], b['latency_ms']['p99']))")"
    done ;;
  c2)
    : >bench/results/cluster-c2.json
    for mode in one cluster; do
      runs=()
      for rep in 1 2 3; do
        if [ $mode = one ]; then
          start "all" $BASE 10; url=ws://127.0.0.1:$BASE/v1/ws
        else
          start_nats; start "edge" $((BASE + 1)) 0.001; start "ingest" $((BASE + 3)) 10; url=ws://127.0.0.1:$((BASE + 1))/v1/ws
        fi
        out=$("$LOAD" --url "$url" --connections 100 --ramp-per-sec 1000 --subscribe "$SUB" --duration 20)
        stop_all
        echo "{\"mode\":\"$mode\",\"run\":$rep,\"result\":$out}" >>bench/results/cluster-c2.json
        runs+=("$(echo "$out" | field '"%s %s" % (d["latency_ms"]["p50"], d["latency_ms"]["p99"])')")
      done
      printf '%s\n' "${runs[@]}" | python3 -c "
import sys, statistics as st
r=[l.split() for l in sys.stdin if l.strip()]
p50=[float(x[0]) for x in r]; p99=[float(x[1]) for x in r]
print('C2 $mode (3 runs) p50 median=%sms %s  p99 median=%sms %s' % (st.median(p50), p50, st.median(p99), p99))"
    done ;;
  c3)
    : >bench/results/cluster-c3.json
    hz=$(getconf CLK_TCK)
    for k in 1 2 4 8; do
      start_nats
      for i in $(seq "$k"); do start "edge" $((BASE + 10 + i)) 0.001; done
      start "ingest" $((BASE + 3)) 2000
      sleep 2
      t0=$(cpu_ticks "$nats_pid"); a0=$(metric $((BASE + 3)) dexpulse_cluster_publish_acks_total)
      sleep 20
      t1=$(cpu_ticks "$nats_pid"); a1=$(metric $((BASE + 3)) dexpulse_cluster_publish_acks_total)
      lag=$(metric $((BASE + 11)) dexpulse_cluster_consumer_lag_messages)
      stop_all
      python3 -c "
import json
cpu=($t1-$t0)/$hz; msgs=$a1-$a0
print(json.dumps({'edges':$k,'nats_cpu_seconds':cpu,'messages':msgs,'nats_cpu_share':cpu/20,'us_per_message':cpu/msgs*1e6,'edge1_lag_messages':float('${lag:-0}')}))" | tee -a bench/results/cluster-c3.json | field '"C3 edges=%d: nats-server %.1f%% of a core, %.1f us per message published (%d messages), edge 1 lag %d" % (d["edges"], d["nats_cpu_share"]*100, d["us_per_message"], d["messages"], d["edge1_lag_messages"])'
    done ;;
  c4)
    start_nats
    start "ingest" $((BASE + 3)) "${C4_RATE:-100000}"
    sleep 2
    a0=$(metric $((BASE + 3)) dexpulse_cluster_publish_acks_total)
    sleep 10
    a1=$(metric $((BASE + 3)) dexpulse_cluster_publish_acks_total)
    w=$(metric $((BASE + 3)) dexpulse_cluster_unpublished_events)
    ps=$(curl -s http://127.0.0.1:$((BASE + 3))/metrics | awk '/^dexpulse_cluster_publish_seconds_(sum|count)/ {print $2}' | paste -sd' ')
    stop_all
    python3 -c "
import json
s,c=[float(x) for x in '$ps'.split()]
print(json.dumps({'acks_per_s':($a1-$a0)/10,'waiting_at_end':float('${w:-0}'),'mean_publish_ms':s/c*1e3}))" | tee bench/results/cluster-c4.json | field '"C4 the ingest publishes %d events/s at most (mean %.3f ms from send to ack); %d waited at the end" % (d["acks_per_s"], d["mean_publish_ms"], d["waiting_at_end"])' ;;
  *) echo "unknown point $p" >&2; exit 64 ;;
  esac
done
