#!/usr/bin/env bash
# Reads of the event log on disk while the engine publishes (issue 24): does a reader of old
# frames move the publishing? The bench source publishes 1,000 events/s into a durable hub whose
# memory holds only the last 100 frames, so `/v1/signals?since=…` pages come from the log file
# (the archive: its own read handle, on the blocking pool). 100 WebSocket subscribers measure
# publish-to-receive latency; the log's commit time comes from dexpulse_log_commit_seconds.
# Each run: 5 s to fill the log, then 20 s measured, alone or with READERS clients (default 8)
# reading 1,000-frame pages from seq 1 onwards as fast as they can.
#
#   DEX=path/to/build bench/archive.sh        # default target/release/dexpulse
set -euo pipefail
cd "$(dirname "$0")/.."
ulimit -n 65536 2>/dev/null || true
cargo build --release --quiet --bin dexpulse --bin loadgen
DEX=${DEX:-target/release/dexpulse}
LOAD=target/release/loadgen
PORT=${BENCH_PORT:-18730}
READERS=${READERS:-8}
tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$tmp"' EXIT
for rep in 1 2; do
  for readers in 0 "$READERS"; do
    rm -rf "$tmp/data"
    env DEXPULSE_SOURCE__BENCH__EVENTS_PER_SECOND=1000 DEXPULSE_STORE__DATA_DIR="$tmp/data" \
      DEXPULSE_HUB__RETAIN_EVENTS=100 DEXPULSE_HUB__RETAIN_MAX_EVENTS=100 DEXPULSE_HUB__RETAIN_SECONDS=0 \
      RUST_LOG=warn "$DEX" serve --config config/bench.toml --bind 127.0.0.1:$PORT >/dev/null 2>&1 &
    pid=$!
    for _ in $(seq 100); do curl -sf http://127.0.0.1:$PORT/healthz >/dev/null 2>&1 && break; sleep 0.05; done
    sleep 5
    before=$(curl -s http://127.0.0.1:$PORT/metrics | awk '/^dexpulse_log_commit_seconds_(sum|count)/ {print $2}' | tr '\n' ' ')
    python3 - "$PORT" "$readers" 20 > "$tmp/readers.out" <<'PY' &
import json, sys, threading, time, urllib.request
port, n, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
done = [0, 0]
stop = time.time() + secs
def reader():
    since = 0
    while time.time() < stop:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/signals?since={since}&limit=1000") as r:
            page = json.load(r)
        got = page["signals"]
        done[0] += 1; done[1] += len(got)
        since = got[-1]["seq"] if got and since < page["head_seq"] - 2000 else 0
threads = [threading.Thread(target=reader) for _ in range(n)]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps({"pages_per_s": round(done[0] / secs, 1), "frames_per_s": round(done[1] / secs)}))
PY
    rp=$!
    out=$("$LOAD" --url ws://127.0.0.1:$PORT/v1/ws --connections 100 --ramp-per-sec 1000 --subscribe '{"op":"subscribe","channel":"signals"}' --duration 20 --source-addresses 2)
    wait $rp
    after=$(curl -s http://127.0.0.1:$PORT/metrics | awk '/^dexpulse_log_commit_seconds_(sum|count)/ {print $2}' | tr '\n' ' ')
    kill -INT $pid; wait $pid 2>/dev/null || true
    python3 - "$rep" "$readers" "$out" "$before" "$after" "$(cat "$tmp/readers.out" 2>/dev/null || echo '{}')" <<'PY'
import json, sys
rep, readers, out, before, after, rd = sys.argv[1:7]
d = json.loads(out); l = d["latency_ms"]
b = [float(x) for x in before.split()]; a = [float(x) for x in after.split()]
commit_ms = (a[0] - b[0]) / max(a[1] - b[1], 1) * 1000
r = json.loads(rd) if rd.strip() else {}
print(f"archive run={rep} readers={readers} publish->receive p50={l['p50']}ms p99={l['p99']}ms gaps={d['seq_gaps']} "
      f"commit mean={commit_ms:.3f}ms reads: {r.get('pages_per_s', 0)} pages/s, {r.get('frames_per_s', 0)} frames/s from the log")
PY
  done
done
