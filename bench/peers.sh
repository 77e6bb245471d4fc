#!/usr/bin/env bash
# Side by side in one window, alternating: this build, another build of dexpulse, and the Node
# `ws` peer hub of ../shared/bench (copy it first: `cp -r ../shared/bench /tmp/peerbench &&
# npm ci --prefix /tmp/peerbench/peers`). The same load generator against each, one JSON line
# per run in bench/results/peers.json and a summary line on stdout.
#
#   PREV=/path/to/dexpulse PEERS=/tmp/peerbench/peers bench/peers.sh p2 p1 p3 p10
#
# p2:  one event's latency at 10 events/s to N = 100, 1,000, 10,000 subscribers (2 runs each)
# p1:  deliveries/s and p99 at 1,000 subscribers, RATES events/s (default 1000 1500 2000)
# p3:  RSS growth per idle subscriber at 10,000
# p10: 10,000 subscribers at 200 events/s (2 M deliveries/s offered)
# p2pin: P2 at 10,000 with the server on CPU 0 and the load generator on CPU 1 (taskset), so
#        that neither takes the other's core: what the server does alone with one core
set -euo pipefail
cd "$(dirname "$0")/.."
ulimit -n 200000 2>/dev/null || ulimit -n 65536 2>/dev/null || true
cargo build --release --quiet --bin dexpulse --bin loadgen
THIS=${THIS:-target/release/dexpulse}
PREV=${PREV:?PREV=path to the previous build}
PEERS=${PEERS:?PEERS=path to the peers directory with node_modules}
LOAD=target/release/loadgen
PORT=${BENCH_PORT:-18720}
SUB='{"op":"subscribe","channel":"signals"}'
mkdir -p bench/results
pid=""
start() { # server rate
  case $1 in
    this|prev)
      local bin=$THIS; [ "$1" = prev ] && bin=$PREV
      env DEXPULSE_SOURCE__BENCH__EVENTS_PER_SECOND="$2" RUST_LOG=warn ${SERVER_PIN:-} "$bin" serve --config config/bench.toml --bind 127.0.0.1:$PORT >/dev/null 2>&1 & ;;
    node) ${SERVER_PIN:-} node "$PEERS/node-ws-hub.js" $PORT "$2" 0 >/dev/null 2>&1 & ;;
  esac
  pid=$!
  for _ in $(seq 200); do (echo >/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && return; sleep 0.05; done
  echo "$1 did not start" >&2; exit 1
}
stop() { kill -INT "$pid" 2>/dev/null; sleep 0.3; kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; sleep 1; }
rss() { awk '/VmRSS/ {print $2}' /proc/"$pid"/status; }
summary() { python3 -c "
import json,sys
d=json.loads(sys.argv[2]); l=d.get('latency_ms',{})
print(sys.argv[1], 'deliveries/s=%s p50=%sms p99=%sms made=%s gaps=%s loadgen_cpu=%s' % (d.get('deliveries_per_s'), l.get('p50'), l.get('p99'), d.get('connections_made'), d.get('seq_gaps'), d.get('loadgen_cpu_share_of_window')))" "$1" "$2"; }
run() { # label server rate n duration
  start "$2" "$3"
  local out
  out=$(${LOAD_PIN:-} "$LOAD" --url ws://127.0.0.1:$PORT/v1/ws --connections "$4" --ramp-per-sec 5000 --subscribe "$SUB" --duration "$5" --source-addresses 8 2>/dev/null || echo '{}')
  stop
  echo "{\"point\":\"$1\",\"server\":\"$2\",\"rate\":$3,\"n\":$4,\"result\":$out}" >> bench/results/peers.json
  summary "$1 server=$2 rate=$3 n=$4" "$out"
}
for p in "$@"; do
  case $p in
  p2) for n in 100 1000 10000; do for rep in 1 2; do for s in this prev node; do run P2 $s 10 $n 20; done; done; done ;;
  p1) for rate in ${RATES:-1000 1500 2000}; do for s in this prev node; do run P1 $s "$rate" 1000 10; done; done ;;
  p2pin) for rep in 1 2; do for s in this prev node; do
      SERVER_PIN="taskset -c 0" LOAD_PIN="taskset -c 1" run P2pin $s 10 10000 20; done; done ;;
  p10) for rep in 1 2; do for s in this prev node; do run P10 $s 200 10000 15; done; done ;;
  p3)
    for s in this prev node; do
      start $s 0.001; sleep 1; before=$(rss)
      "$LOAD" --url ws://127.0.0.1:$PORT/v1/ws --connections 10000 --ramp-per-sec 5000 --subscribe "$SUB" --duration 6 --source-addresses 8 >/tmp/peers-p3.json 2>/dev/null &
      lp=$!; sleep 5; after=$(rss); wait $lp || true
      made=$(python3 -c "import json; print(json.load(open('/tmp/peers-p3.json'))['connections_made'])")
      stop
      python3 -c "print('P3 server=$s made=$made kib_per_conn=%.2f' % (($after-$before)/max($made,1)))"
    done ;;
  *) echo "unknown point $p" >&2; exit 2 ;;
  esac
done
