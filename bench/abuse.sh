#!/usr/bin/env bash
# Hostile clients and upstreams against the release server on 127.0.0.1, with the documented
# defaults and no API key (docs/hardening.md). Bounded in count and time (about 4 minutes).
# Prints, per attack, what the attack saw, the server's RSS, and a bystander's latency and gaps.
#
#   bench/abuse.sh              # results in bench/results/abuse.json
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin dexpulse --bin loadgen --bin abuse
mkdir -p bench/results
DEX=${DEX:-target/release/dexpulse}
LOAD=target/release/loadgen
ABUSE=target/release/abuse
PORT=${ABUSE_PORT:-18750}
UP=${ABUSE_UPSTREAM_PORT:-18751}
URL=ws://127.0.0.1:$PORT/v1/ws
OUT=bench/results/abuse.json
: >"$OUT"
pid=""
stop() { [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true; pid=""; }
trap 'stop; kill $(jobs -p) 2>/dev/null || true' EXIT
rss() { awk '/VmRSS/ {print $2}' /proc/"$pid"/status; }
start() { # env...
  # The descriptor limit the findings were made with: 1,024.
  ( ulimit -n 1024; exec env RUST_LOG=warn "$@" "$DEX" serve --config config/bench.toml --bind 127.0.0.1:$PORT ) >/tmp/abuse-server.log 2>&1 &
  pid=$!
  for _ in $(seq 100); do curl -sf http://127.0.0.1:$PORT/healthz >/dev/null 2>&1 && return; sleep 0.05; done
  echo "server did not start"; cat /tmp/abuse-server.log; exit 1
}
# /healthz as a monitor sees it: "status ms" (status 000: refused or timed out).
healthz() { curl -s -o /dev/null -m 10 -w '"%{http_code} %{time_total}s"' http://127.0.0.1:$PORT/healthz || true; }
record() { echo "$1" | tee -a "$OUT"; }
ulimit -n 8192 2>/dev/null || true

# Client attacks, against the bench source (200 events/s) with a bystander subscribed to all.
start DEXPULSE_SOURCE__BENCH__EVENTS_PER_SECOND=200
rss0=$(rss)
"$LOAD" --url "$URL" --connections 1 --subscribe '{"op":"subscribe","channel":"signals"}' --duration 100 >/tmp/abuse-bystander.json &
bystander=$!
sleep 1
r=$("$ABUSE" filters "$URL" --connections 31 --subscribes 32 --pairs 2650 --hold 3)
record "{\"phase\":\"filters\",\"result\":$r,\"rss_kib_before\":$rss0,\"rss_kib_after\":$(rss),\"healthz\":$(healthz)}"
# The same with filters inside the limits: four of 1,000 pairs fit a session's 4,096 entries.
r=$("$ABUSE" filters "$URL" --connections 31 --subscribes 32 --pairs 1000 --hold 3)
record "{\"phase\":\"filters_within_limits\",\"result\":$r,\"rss_kib_after\":$(rss),\"healthz\":$(healthz)}"
# A crowd: 200 connections × 4 filters of 1,000 pairs (800,800 entries) against the 500,000
# that all sessions together may hold (session.max_total_filter_entries): the rest get server_busy.
r=$("$ABUSE" filters "$URL" --connections 200 --subscribes 4 --pairs 1000 --hold 3)
record "{\"phase\":\"filters_crowd\",\"result\":$r,\"rss_kib_after\":$(rss),\"healthz\":$(healthz)}"
sleep 2
record "{\"phase\":\"filters_left\",\"rss_kib\":$(rss)}"
"$ABUSE" slowloris 127.0.0.1:$PORT --sockets 1100 --hold 15 >/tmp/abuse-slow.json &
slow=$!
sleep 5
h=$(healthz)
ws_ok=$( (timeout 5 "$LOAD" --url "$URL" --connections 1 --duration 1 >/dev/null 2>&1 && echo true) || echo false)
sleep 5
h2=$(healthz)
wait $slow || true
record "{\"phase\":\"slowloris\",\"result\":$(cat /tmp/abuse-slow.json),\"healthz_at_5s\":$h,\"healthz_at_12s\":$h2,\"new_websocket_at_5s\":$ws_ok,\"shed\":\"$(curl -s http://127.0.0.1:$PORT/metrics | awk '/^dexpulse_shed_connections_total/ {gsub(/"/, "\\\""); s=s $0 "; "} END {print s}')\",\"rss_kib\":$(rss)}"
r=$("$ABUSE" protocol "$URL")
record "{\"phase\":\"protocol\",\"result\":$r}"
# Clients that stop reading (receive buffer 4 KiB) for 12 s (within their queue), 30 s (past
# queue + stall_close_seconds, within close_timeout_seconds) and 50 s (past both), then read.
stalls=""
for p in 12 30 50; do "$ABUSE" stall "$URL" --pause $p >/tmp/abuse-stall-$p.json & stalls="$stalls $!"; done
for s in $stalls; do wait "$s" || true; done
for p in 12 30 50; do record "{\"phase\":\"stall_${p}s\",\"result\":$(cat /tmp/abuse-stall-$p.json),\"rss_kib\":$(rss)}"; done
wait $bystander || true
record "{\"phase\":\"bystander\",\"result\":$(cat /tmp/abuse-bystander.json)}"
stop
# Slowloris again from another address (127.0.0.2), with a per-address limit: others unaffected.
start DEXPULSE_SOURCE__BENCH__EVENTS_PER_SECOND=200 DEXPULSE_SERVER__MAX_CONNECTIONS_PER_IP=256 \
      DEXPULSE_AUTH__KEYS='[{key="abuse-key-0001",max_connections=4}]'
# Guessing keys: 15 wrong ones from one address, then the right one from it and from another.
upgrade() { # key source-address
  curl -s -o /dev/null -m 2 -w '%{http_code}' --interface "$2" -H 'Connection: Upgrade' -H 'Upgrade: websocket' \
    -H 'Sec-WebSocket-Version: 13' -H 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==' \
    -H "Authorization: Bearer $1" http://127.0.0.1:$PORT/v1/ws || true
}
wrong=""; for i in $(seq 15); do wrong="$wrong\"$(upgrade wrong-guess-$i 127.0.0.3)\","; done
right_same=$(upgrade abuse-key-0001 127.0.0.3)
right_other=$(upgrade abuse-key-0001 127.0.0.1)
record "{\"phase\":\"key_guessing\",\"wrong_key_statuses\":[${wrong%,}],\"right_key_same_address\":\"$right_same\",\"right_key_other_address\":\"$right_other\"}"
"$ABUSE" slowloris 127.0.0.1:$PORT --sockets 1100 --hold 8 --source 127.0.0.2 >/tmp/abuse-slow2.json &
slow=$!
sleep 4
h=$(healthz)
ws_ok=$( (timeout 5 "$LOAD" --url "$URL?token=abuse-key-0001" --connections 1 --duration 1 >/dev/null 2>&1 && echo true) || echo false)
wait $slow || true
record "{\"phase\":\"slowloris_per_ip_limit\",\"result\":$(cat /tmp/abuse-slow2.json),\"healthz_during\":$h,\"new_websocket_during\":$ws_ok,\"shed\":\"$(curl -s http://127.0.0.1:$PORT/metrics | awk '/^dexpulse_shed_connections_total/ {gsub(/"/, "\\\""); s=s $0 "; "} END {print s}')\"}"
# SIGTERM while half-sent requests are open.
"$ABUSE" slowloris 127.0.0.1:$PORT --sockets 200 --hold 30 >/dev/null &
slow=$!
sleep 2
t0=$(date +%s.%N)
kill -TERM "$pid"; wait "$pid" || true; pid=""
t1=$(date +%s.%N)
kill $slow 2>/dev/null || true
record "{\"phase\":\"sigterm_with_half_sent_requests\",\"exit_seconds\":$(python3 -c "print(round($t1-$t0,2))")}"

# A resume of 90,000 events (the history holds 100,000) through one WebSocket: all of them, in
# order, or recovered:false; never recovered:true with most of it dropped.
start DEXPULSE_SOURCE__BENCH__EVENTS_PER_SECOND=25000 DEXPULSE_HUB__RETAIN_EVENTS=100000
sleep 5
r=$("$ABUSE" resume "$URL" --events 90000)
record "{\"phase\":\"resume_90000\",\"result\":$r,\"rss_kib\":$(rss)}"
stop

# Upstream attacks: the live source pointed at a hostile DexScreener. `strings`: 1 MiB symbols in
# every answer, on the pair asked for and on six pairs nobody asked for.
for mode in bomb 429 403 strings; do
  "$ABUSE" upstream 127.0.0.1:$UP --mode $mode --bomb-mib 1024 2>/dev/null &
  up=$!
  sleep 1
  start DEXPULSE_SOURCE__KIND=live DEXPULSE_DEXSCREENER_BASE_URL=http://127.0.0.1:$UP \
        DEXPULSE_SOURCE__LIVE__PAIRS='["solana:BCDdHonby65iduz3Ev3c9v5XjNkzyu5e56KRFHpBM4T9"]' \
        DEXPULSE_SOURCE__LIVE__DISCOVERY=false DEXPULSE_SOURCE__LIVE__GECKOTERMINAL__ENABLED=false \
        DEXPULSE_SOURCE__LIVE__MIN_INTERVAL_SECONDS=1 DEXPULSE_SOURCE__LIVE__BACKOFF_MAX_SECONDS=2
  rss0=$(rss); peak=$rss0
  for _ in $(seq 20); do sleep 0.5; r=$(rss); [ "$r" -gt "$peak" ] && peak=$r; done
  ready=$(curl -s http://127.0.0.1:$PORT/readyz)
  errors=$(curl -s http://127.0.0.1:$PORT/metrics | awk '/^dexpulse_upstream_requests_total/ {gsub(/"/, "\\\""); s=s $0 "; "} END {print s}')
  pairs_bytes=$(curl -s http://127.0.0.1:$PORT/v1/pairs | wc -c)
  signals_bytes=$(curl -s "http://127.0.0.1:$PORT/v1/signals?limit=1000" | wc -c)
  record "{\"phase\":\"upstream_$mode\",\"rss_kib_start\":$rss0,\"rss_kib_peak\":$peak,\"rss_kib_end\":$(rss),\"pairs_bytes\":$pairs_bytes,\"signals_bytes\":$signals_bytes,\"readyz\":$ready,\"requests\":\"$errors\"}"
  stop
  kill $up 2>/dev/null || true; wait $up 2>/dev/null || true
done
echo "results: $OUT"
