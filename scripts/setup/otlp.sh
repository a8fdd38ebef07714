#!/usr/bin/env bash
# Installs (once) the Python venv of the local OTLP/HTTP receiver (scripts/otlp-receiver.py) that
# the OTLP tests start themselves: the official protobuf definitions (`opentelemetry-proto`, the
# reference Python package of opentelemetry-proto) to decode what the agent sends, and botocore
# to verify its SigV4 signatures independently. Nothing to start.
# Idempotent and quick when the pinned versions are already there.
#
#   scripts/setup/otlp.sh        # <repo>/.otlp/venv
#
# Env: OTLP_DIR (default <repo>/.otlp), PYTHON (default python3.11, as localstack.sh).
set -euo pipefail

repo="$(cd "$(dirname "$0")/../.." && pwd)"
dir="${OTLP_DIR:-$repo/.otlp}"
python="${PYTHON:-python3.11}"
venv="$dir/venv"

# Pins: the newest releases when chosen, checked to install from PyPI together on Python 3.11
# (opentelemetry-proto 1.45.2 wants protobuf >=5,<8). Bump them together, then run
# scripts/otlp-receiver-selftest.py.
pins=(
    "opentelemetry-proto==1.45.2"
    "protobuf==7.36.2"
    "botocore==1.44.8"
)

# Every pin installed at its version: nothing to do.
installed() {
    [ -x "$venv/bin/python" ] && "$venv/bin/python" - "${pins[@]}" <<'PY' 2>/dev/null
import importlib.metadata as metadata
import sys

for pin in sys.argv[1:]:
    name, version = pin.split("==")
    if metadata.version(name) != version:
        sys.exit(1)
PY
}
if installed; then
    echo "OTLP receiver venv ready at $venv"
    exit 0
fi

if ! command -v "$python" >/dev/null 2>&1 || ! "$python" -c 'import ensurepip, venv' 2>/dev/null; then
    apt-get update
    apt-get install -y python3.11 python3.11-venv
fi

mkdir -p "$dir"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet "${pins[@]}"
if ! installed; then
    echo "the OTLP receiver venv at $venv does not hold ${pins[*]} after installing" >&2
    exit 1
fi
echo "OTLP receiver venv installed at $venv"
