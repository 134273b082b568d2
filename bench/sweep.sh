#!/usr/bin/env bash
# Tuning sweep: one quick scenario per setting, one after the other in one session;
# the table rows go to $1 (default bench/results/sweep.txt). About 8 minutes.
cd "$(dirname "$0")/.."
run() {
  label="$1"; shift
  row=$(timeout 300 .venv/bin/python -m bench --quick --results-dir "${TMPDIR:-/tmp}/kassa-sweep" "$@" 2>&1 | grep -E "^\| (async|hot|bulk) ")
  echo "$label" >> "$OUT"
  echo "$row" >> "$OUT"
}
OUT=${1:-bench/results/sweep.txt}
: > "$OUT"
run "baseline" --scenarios async,hot
run "receipt flush 50ms (seed)" --scenarios async --set KASSA_RECEIPT_FLUSH_INTERVAL_MS=50
run "receipt batch 200" --scenarios async,bulk --set KASSA_RECEIPT_BATCH_SIZE=200
run "executor writers 1" --scenarios async,hot --set KASSA_EXECUTOR_WRITERS=1
run "executor writers 4" --scenarios async,hot --set KASSA_EXECUTOR_WRITERS=4
run "executor batch 50" --scenarios async,hot --set KASSA_EXECUTOR_BATCH_MAX=50
run "processor workers 8" --scenarios async --set KASSA_PROCESSOR_WORKERS=8
run "accept flush 5ms" --scenarios async --set KASSA_ACCEPT_FLUSH_INTERVAL_MS=5
run "db pool 20" --scenarios async --set KASSA_DB_POOL_MAX=20
run "3 gunicorn workers" --scenarios async --workers 3
run "1 gunicorn worker" --scenarios async --workers 1
echo done >> "$OUT"
