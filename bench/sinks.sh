#!/usr/bin/env bash
# The alert sinks' figures of BENCHMARKS.md, on this machine, everything on 127.0.0.1:
#
#   bench/sinks.sh rate     # S1: webhook deliveries/s to a local receiver (examples/webhook_receiver.rs)
#   bench/sinks.sh p1       # S2: P1 (1,000 subscribers) with and without three sinks, alternating
#
# S1: the bench source publishes faster than one webhook sink can deliver (events in the event
# log on disk, as a sink's cursor needs); the rate is the sink's `delivered` count over 10 s,
# read from /v1/sinks, with the receiver verifying every signature.
# S2: the P1 point at RATE events/s (default 1000 and 1500), three runs each way, alternating:
# without sinks, then with a webhook (unlimited rate, every event) to the example receiver and a
# Telegram and a Discord sink (their default rates, every event) to bench/standin.py.
set -euo pipefail
cd "$(dirname "$0")/.."
ulimit -n 200000 2>/dev/null || ulimit -n 65536 2>/dev/null || true
cargo build --release --quiet --bin dexpulse --bin loadgen --example webhook_receiver
DEX=${DEX:-target/release/dexpulse}
LOAD=target/release/loadgen
RECV=target/release/examples/webhook_receiver
PORT=${BENCH_PORT:-18700}
HOOK=18791; STANDIN=18792
tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$tmp"' EXIT
printf 'whsec_%s\n' "$(head -c 32 /dev/urandom | base64)" > "$tmp/hook.whsec"
echo "123:BENCH" > "$tmp/tg.token"
"$RECV" 127.0.0.1:$HOOK "$tmp/hook.whsec" > /dev/null &
python3 bench/standin.py $STANDIN &
sleep 0.5
field() { python3 -c "import json,sys; d=json.loads(sys.stdin.read()); print($1)"; }
hook="{name = \"hook\", kind = \"webhook\", url = \"http://127.0.0.1:$HOOK/\", secret_file = \"$tmp/hook.whsec\", rate_per_minute = 1e7, burst = 1e6}"
chats="{name = \"tg\", kind = \"telegram\", bot_token_file = \"$tmp/tg.token\", chat_id = 1, api_base_url = \"http://127.0.0.1:$STANDIN\"}, {name = \"dc\", kind = \"discord\", url = \"http://127.0.0.1:$STANDIN/api/webhooks/1/x\"}"
server_pid=""
start_server() { # rate sinks
  rm -rf "$tmp/data"
  env DEXPULSE_SOURCE__BENCH__EVENTS_PER_SECOND="$1" DEXPULSE_SINKS="$2" DEXPULSE_STORE__DATA_DIR="$tmp/data" RUST_LOG=warn \
    "$DEX" serve --config config/bench.toml --bind 127.0.0.1:$PORT >/dev/null 2>&1 &
  server_pid=$!
  for _ in $(seq 100); do curl -sf http://127.0.0.1:$PORT/healthz >/dev/null 2>&1 && return; sleep 0.05; done
  echo "server did not start" >&2; exit 1
}
stop_server() { kill -INT "$server_pid" 2>/dev/null; wait "$server_pid" 2>/dev/null || true; }
delivered() { curl -s http://127.0.0.1:$PORT/v1/sinks | field "d['sinks'][0]['delivered']"; }

for p in "$@"; do
  case $p in
  rate)
    for rep in 1 2 3; do
      start_server 20000 "[$hook]"
      sleep 3
      a=$(delivered); sleep 10; b=$(delivered)
      lag=$(curl -s http://127.0.0.1:$PORT/v1/sinks | field "d['sinks'][0]['lag_seqs']")
      stop_server
      echo "S1 run=$rep webhook deliveries/s=$(( (b - a) / 10 )) (lag at the end: $lag events)"
    done ;;
  p1)
    for rate in ${RATES:-1000 1500}; do
      for rep in 1 2 3; do
        for with in none three; do
          if [ $with = none ]; then sinks="[]"; else sinks="[$hook, $chats]"; fi
          start_server "$rate" "$sinks"
          out=$("$LOAD" --url ws://127.0.0.1:$PORT/v1/ws --connections 1000 --ramp-per-sec 2000 --subscribe '{"op":"subscribe","channel":"signals"}' --duration 10 --source-addresses 4)
          d=0; [ $with = three ] && d=$(delivered)
          stop_server
          echo "S2 rate=$rate run=$rep sinks=$with deliveries/s=$(echo "$out" | field 'd["deliveries_per_s"]') p50=$(echo "$out" | field 'd["latency_ms"]["p50"]')ms p99=$(echo "$out" | field 'd["latency_ms"]["p99"]')ms gaps=$(echo "$out" | field 'd["seq_gaps"]') webhook_delivered=$d"
        done
      done
    done ;;
  *) echo "unknown point $p" >&2; exit 2 ;;
  esac
done
