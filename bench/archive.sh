#!/usr/bin/env bash
# Reads of the event log on disk while the engine publishes (issue 24): does a reader of old
# frames move the publishing? The bench source publishes 1,000 events/s into a durable hub whose
# memory holds only the last 100 frames, so `/v1/signals?since=…` pages come from the log file
# (the archive: its own read handle, on the blocking pool). 100 WebSocket subscribers measure
# publish-to-receive latency; the log's commit time comes from dexpulse_log_commit_seconds.
# Each run: 5 s to fill the log, then 20 s measured, alone or with READERS clients (default 8)
# reading 1,000-frame pages from seq 1 onwards as fast as they can. With READ=resume the readers
# are WebSocket clients instead, each resuming 4,000 events back (`abuse resume`: all of them
# from the log, in order) and starting again as soon as it has them.
#
#   DEX=path/to/build bench/archive.sh        # default target/release/dexpulse
#   READ=resume DEX=… bench/archive.sh
#   READERS_NICE=19 bench/archive.sh     # the readers' own processes at the lowest priority, so
#                                        # that what moves is the server's reading, not theirs
set -euo pipefail
cd "$(dirname "$0")/.."
ulimit -n 65536 2>/dev/null || true
cargo build --release --quiet --bin dexpulse --bin loadgen --bin abuse
DEX=${DEX:-target/release/dexpulse}
LOAD=target/release/loadgen
PORT=${BENCH_PORT:-18730}
READERS=${READERS:-8}
READ=${READ:-signals}
NICE=${READERS_NICE:-0}
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
    if [ "$READ" = resume ]; then
      nice -n "$NICE" python3 - "$PORT" "$readers" 20 target/release/abuse > "$tmp/readers.out" <<'PY' &
import json, subprocess, sys, threading, time
port, n, secs, abuse = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
done = [0, 0, 0]
stop = time.time() + secs
def reader():
    while time.time() < stop:
        out = subprocess.run([abuse, "resume", f"ws://127.0.0.1:{port}/v1/ws", "--events", "4000"],
                             capture_output=True, text=True).stdout
        r = json.loads(out)
        done[0] += 1; done[1] += r.get("signals", 0)
        done[2] += (r.get("out_of_order", 0) or 0) + (r.get("lagged_notices", 0) or 0)
threads = [threading.Thread(target=reader) for _ in range(n)]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps({"pages_per_s": round(done[0] / secs, 1), "frames_per_s": round(done[1] / secs), "disorder": done[2]}))
PY
    else
    nice -n "$NICE" python3 - "$PORT" "$readers" 20 > "$tmp/readers.out" <<'PY' &
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
    fi
    rp=$!
    out=$("$LOAD" --url ws://127.0.0.1:$PORT/v1/ws --connections 100 --ramp-per-sec 1000 --subscribe '{"op":"subscribe","channel":"signals"}' --duration 20 --source-addresses 2)
    wait $rp
    after=$(curl -s http://127.0.0.1:$PORT/metrics | awk '/^dexpulse_log_commit_seconds_(sum|count)/ {print $2}' | tr '\n' ' ')
    kill -INT $pid; wait $pid 2>/dev/null || true
    python3 - "$rep" "$readers" "$out" "$before" "$after" "$(cat "$tmp/readers.out" 2>/dev/null || echo '{}')" "$READ" "$NICE" <<'PY'
import json, sys
rep, readers, out, before, after, rd, read, nice = sys.argv[1:9]
d = json.loads(out); l = d["latency_ms"]
b = [float(x) for x in before.split()]; a = [float(x) for x in after.split()]
commit_ms = (a[0] - b[0]) / max(a[1] - b[1], 1) * 1000
r = json.loads(rd) if rd.strip() else {}
print(f"archive read={read} nice={nice} run={rep} readers={readers} publish->receive p50={l['p50']}ms p99={l['p99']}ms gaps={d['seq_gaps']} "
      f"commit mean={commit_ms:.3f}ms reads: {r.get('pages_per_s', 0)} pages (or resumes)/s, {r.get('frames_per_s', 0)} frames/s from the log"
      + (f", {r['disorder']} out of order or lagged" if "disorder" in r else ""))
PY
  done
done
