#!/usr/bin/env bash
# The whole agent's cost of scraping 50 copies: one local HTTP server (Python's threading server)
# serves the 130 KB vLLM V1 exposition with 8 engines (tests/fixtures/scrape/vllm-v1-8-engines.txt)
# to 50 static targets (`[[scrape.target]]`, one component each), every 10 s; the agent runs once
# with [scrape] on and once off (GPU and Docker off, EMF to /dev/null), scripts/overhead.sh each
# time.
#
#   scripts/scrape-overhead.sh [DURATION_SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-120}
dir=$(mktemp -d)
cp tests/fixtures/scrape/vllm-v1-8-engines.txt "$dir/metrics"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
python3 -m http.server "$port" --bind 127.0.0.1 --directory "$dir" >/dev/null 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true; rm -rf "$dir"' EXIT
for scrape in false true; do
    config="$dir/agent-$scrape.toml"
    {
        printf '[endpoint]\nname = "overhead"\ninstance_id = "overhead-bench"\n'
        printf '[metrics]\npublish_frequency_seconds = 10\n'
        printf '[output]\nemf_destination = "file:/dev/null"\n'
        printf '[gpu]\nenabled = false\n[docker]\nenabled = false\n[admin]\nenabled = false\n'
        printf '[scrape]\nenabled = %s\n' "$scrape"
        for i in $(seq 1 50); do
            printf '[[scrape.target]]\ncomponent = "model-%s"\nurl = "http://127.0.0.1:%s/metrics"\n' "$i" "$port"
        done
    } >"$config"
    echo "scrape enabled = $scrape, 50 targets:"
    scripts/overhead.sh "$duration" "$config"
done
