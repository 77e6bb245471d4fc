#!/usr/bin/env bash
# The fuzzing harness (crates/core/src/fuzz.rs) for a bounded time: proptest feeds the upstream
# decoders, the tape reader and the WebSocket client-message parser arbitrary and mutated input.
# A failure is written to crates/core/proptest-regressions/ (commit it: it stays a test).
#
#   bench/fuzz.sh                      # CASES=200000 per target, at most MAX_SECONDS=900
set -euo pipefail
cd "$(dirname "$0")/.."
CASES=${CASES:-200000}
MAX_SECONDS=${MAX_SECONDS:-900}
cargo test --release --quiet -p dexpulse-core --lib fuzz --no-run >/dev/null 2>&1 || true
start=$(date +%s)
status=0
PROPTEST_CASES=$CASES timeout "$MAX_SECONDS" cargo test --release -p dexpulse-core --lib fuzz -- --test-threads 2 || status=$?
end=$(date +%s)
case $status in
  0) verdict="no failure" ;;
  124) verdict="stopped at the time limit, no failure until then" ;;
  *) verdict="FAILED (see above and crates/core/proptest-regressions/)" ;;
esac
echo "fuzz: $CASES cases per target, $((end - start)) s: $verdict"
exit $(( status == 124 ? 0 : status ))
