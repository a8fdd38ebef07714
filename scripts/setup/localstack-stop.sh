#!/usr/bin/env bash
# Stops the LocalStack started by scripts/setup/localstack.sh (by its pid file). Idempotent.
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
dir="${LOCALSTACK_DIR:-$repo/.localstack}"
pidfile="$dir/localstack.pid"
[ -f "$pidfile" ] || exit 0
pid="$(cat "$pidfile")"
if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 1 40); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.25
    done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
fi
rm -f "$pidfile"
