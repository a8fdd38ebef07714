#!/usr/bin/env bash
# Installs (once) and starts LocalStack on the host, without Docker, for tests/cloudwatch.rs.
# Idempotent: re-running reuses the venv and does nothing if LocalStack already answers.
#
#   scripts/setup/localstack.sh          # install if needed, start, wait for Ready
#   scripts/setup/localstack-stop.sh     # stop it
#
# Env: LOCALSTACK_DIR (default <repo>/.localstack), LOCALSTACK_LISTEN (default 127.0.0.1:4566),
#      PYTHON (default python3.11; localstack-core 4.13.1 is the newest that runs on 3.11).
set -euo pipefail

repo="$(cd "$(dirname "$0")/../.." && pwd)"
dir="${LOCALSTACK_DIR:-$repo/.localstack}"
listen="${LOCALSTACK_LISTEN:-127.0.0.1:4566}"
python="${PYTHON:-python3.11}"
venv="$dir/venv"
mkdir -p "$dir"

if ! command -v "$python" >/dev/null 2>&1 || ! "$python" -c 'import ensurepip, venv' 2>/dev/null; then
    apt-get update
    apt-get install -y python3.11 python3.11-venv
fi

if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import localstack, cbor2' 2>/dev/null; then
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    # One pip command: installed separately these upgrade each other into breakage.
    "$venv/bin/python" -m pip install --quiet \
        "localstack-core[runtime]==4.13.1" "cbor2>=5.5,<6" "cryptography>=41,<45" \
        "pyopenssl>=24,<25" service_identity
fi

health="http://$listen/_localstack/health"
answers() {
    "$venv/bin/python" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' "$health" 2>/dev/null
}
if answers; then
    echo "LocalStack already answers at $listen"
    exit 0
fi

mkdir -p "$dir/state"
: >"$dir/localstack.log"
(
    cd "$dir"
    GATEWAY_SERVER=hypercorn GATEWAY_LISTEN="$listen" OVERRIDE_IN_DOCKER=0 \
    FILESYSTEM_ROOT="$dir/state" SERVICES=cloudwatch,logs EAGER_SERVICE_LOADING=1 \
    DNS_ADDRESS=0 SKIP_SSL_CERT_DOWNLOAD=1 DISABLE_EVENTS=1 \
    nohup "$venv/bin/python" -m localstack.runtime.main >>"$dir/localstack.log" 2>&1 &
    echo $! >"$dir/localstack.pid"
)
for _ in $(seq 1 120); do
    if grep -q '^Ready' "$dir/localstack.log" 2>/dev/null; then
        echo "LocalStack ready at $listen (pid $(cat "$dir/localstack.pid"), log $dir/localstack.log)"
        exit 0
    fi
    if ! kill -0 "$(cat "$dir/localstack.pid")" 2>/dev/null; then
        echo "LocalStack exited; its log:" >&2
        tail -n 40 "$dir/localstack.log" >&2
        exit 1
    fi
    sleep 0.5
done
echo "LocalStack did not print Ready within 60 s; its log:" >&2
tail -n 40 "$dir/localstack.log" >&2
exit 1
