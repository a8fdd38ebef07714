#!/usr/bin/env bash
# The overhead benchmark: runs the release agent for DURATION seconds (default 300) on this host
# and reports its CPU share of one core and its peak resident memory, from /proc/<pid>/stat
# (utime + stime) and VmHWM in /proc/<pid>/status.
#
#   scripts/overhead.sh [DURATION_SECONDS] [CONFIG]
#
# The config defaults to agent.toml.example with EMF written to /dev/null, so the figure is the
# agent's own cost (sampling, aggregation, encoding), not a terminal's.
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-300}
config=${2:-}
bin=target/release/endpoint-metrics-agent
[ -x "$bin" ] || cargo build --release --quiet
if [ -z "$config" ]; then
    config=$(mktemp --suffix=.toml)
    sed -e 's|^emf_destination = .*|emf_destination = "file:/dev/null"|' \
        -e 's|^instance_id = .*|instance_id = "overhead-bench"|' agent.toml.example >"$config"
fi
clk_tck=$(getconf CLK_TCK)
"$bin" run --config "$config" 2>/tmp/overhead-agent.log &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
sleep 2 # start-up (NVML and Docker discovery) is not the steady state being measured
ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
start_ticks=$(ticks)
start_ns=$(date +%s%N)
sleep "$duration"
end_ticks=$(ticks)
end_ns=$(date +%s%N)
hwm_kb=$(awk '/^VmHWM/ {print $2}' "/proc/$pid/status")
rss_kb=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status")
anon_kb=$(awk '/^RssAnon/ {print $2}' "/proc/$pid/status")
file_kb=$(awk '/^RssFile/ {print $2}' "/proc/$pid/status")
kill -TERM $pid
wait $pid || true
awk -v t0="$start_ticks" -v t1="$end_ticks" -v n0="$start_ns" -v n1="$end_ns" -v hz="$clk_tck" \
    -v hwm="$hwm_kb" -v rss="$rss_kb" -v anon="$anon_kb" -v file="$file_kb" 'BEGIN {
        cpu_s = (t1 - t0) / hz; wall_s = (n1 - n0) / 1e9;
        printf "wall %.0f s, agent CPU %.2f s = %.4f%% of one core, peak RSS (VmHWM) %.1f MiB, RSS at end %.1f MiB (anonymous %.1f MiB, file-backed %.1f MiB)\n",
            wall_s, cpu_s, 100 * cpu_s / wall_s, hwm / 1024, rss / 1024, anon / 1024, file / 1024 }'
