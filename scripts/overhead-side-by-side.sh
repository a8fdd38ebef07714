#!/usr/bin/env bash
# Side by side, in the same run: the release agent on a full inference host's picture against
# collectd and prometheus-node-exporter (both from Debian) doing a host-metrics subset.
#
#   scripts/overhead-side-by-side.sh [DURATION_SECONDS] [SYSCALL_PHASE_SECONDS]
#
# The agent's scenario (issue 19, second row): 8 GPUs through the fake NVML library
# (tests/fixtures/fake_nvml/fake_nvml.c, built here with gcc) with 2 processes each, which are the
# host PIDs of real containers; 50 labelled busybox containers in 25 components (the 16 on GPUs
# declare theirs with NVIDIA_VISIBLE_DEVICES); enhanced metrics, 1 s samples, 60 s windows, EMF
# to a file, cost per model on (ml.p4d.24xlarge, 8 GPUs).
# collectd 5.12: cpu, memory, df, Interval 1, no write plugin (its cheapest form).
# node_exporter: cpu, meminfo, filesystem collectors only, scraped every second with curl (the
# scraper's own cost is not counted).
#
# Per process it prints:
# - CPU: share of one core, from nanosecond run time: the first field of
#   /proc/<pid>/task/*/schedstat summed over the threads, at the start and the end of the
#   measured phase (a thread that exits in between loses its time: the thread counts are printed,
#   and /proc/<pid>/stat utime+stime, which keeps exited threads' time in 10 ms ticks, is printed
#   as a cross-check);
# - peak RSS: VmHWM of /proc/<pid>/status;
# - syscalls per second and fork/exec counts, from a SEPARATE phase after the measured one (it
#   perturbs the process a little): `perf stat -e raw_syscalls:sys_enter` on the process, with
#   task:task_newtask filtered to new processes (clone without CLONE_THREAD) and
#   syscalls:sys_enter_execve; children inherit the counters. The phase should span a window
#   close (60 s, the default) so the agent's encode and write are in it.
#
# Needs: root (perf, /proc of other processes), Docker with ema-test-busybox:latest
# (scripts/setup/docker-image.sh), gcc, perf (linux-perf), `apt-get install collectd-core
# prometheus-node-exporter curl`. Everything it starts is named with this run's id and removed
# on exit. Environment: BIN (the agent binary, default target/release/endpoint-metrics-agent;
# several, space-separated, run side by side on the same containers and GPUs, each with its own
# EMF file: a before/after pair measured under the same load),
# KEEP=1 keeps the work folder (configs, EMF file, logs) and prints its path; PROFILE_SECONDS=N
# adds a last phase that profiles the (first) agent with `perf record` for N seconds and prints where
# its time went. COPIES_PER_GPU=1 gives each GPU one copy instead of two (GPU k: copy k, its two
# processes the container's own and one started in it with `docker exec`). NVML_CALLS=1 has the
# fake library count every call (its `calls` directive: a line per sample per agent, appended to a
# file) and prints each agent's NVML calls per sample over the measured phase (the counting itself
# costs the agent a file append per sample, so leave it off for the CPU figures).
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-120}
syscall_seconds=${2:-60}
warmup_seconds=${WARMUP_SECONDS:-5}
read -r -a bins <<<"${BIN:-target/release/endpoint-metrics-agent}"
image=${EMA_TEST_IMAGE:-ema-test-busybox:latest}
gpus=8
containers=50
components=25
copies_per_gpu=${COPIES_PER_GPU:-2}
case "$copies_per_gpu" in 1 | 2) ;; *) echo "COPIES_PER_GPU: 1 or 2" >&2; exit 1 ;; esac
node_port=${NODE_EXPORTER_PORT:-$((20000 + $$ % 20000))}
run_id="ema-ovh-$$-$(date +%s)"
work=$(mktemp -d "/tmp/$run_id.XXXX")

for tool in docker gcc perf collectd prometheus-node-exporter curl; do
    command -v "$tool" >/dev/null || { echo "missing: $tool" >&2; exit 1; }
done
[ -x "${bins[0]}" ] || cargo build --release --quiet

pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    docker ps -aq --filter "label=$run_id" | xargs -r docker rm -f >/dev/null 2>&1 || true
    if [ "${KEEP:-0}" = 1 ]; then echo "kept: $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT

# ---- the fake driver and the containers ----
gcc -O1 -Wall -Werror -shared -fPIC -fvisibility=hidden -o "$work/libnvidia-ml.so.1" \
    tests/fixtures/fake_nvml/fake_nvml.c
echo "starting $containers containers ($run_id)" >&2
ids=()
for i in $(seq 0 $((containers - 1))); do
    component="model-$((i / 2))"
    gpu_env=()
    # Two copies per GPU: copies 0..15 hold the GPUs (component k's two copies share GPU k).
    # One copy per GPU: copy k holds GPU k.
    [ "$i" -lt $((gpus * copies_per_gpu)) ] &&
        gpu_env=(-e "NVIDIA_VISIBLE_DEVICES=$((i / copies_per_gpu))")
    id=""
    for attempt in 1 2 3; do # runc fails now and then on a loaded machine
        docker rm -f "$run_id-$i" >/dev/null 2>&1 || true
        id=$(docker run -d --label "$run_id=$component" --name "$run_id-$i" "${gpu_env[@]}" \
            "$image" sleep 100000) && break
        echo "docker run failed (attempt $attempt), retrying" >&2
        sleep 1
    done
    [ -n "$id" ] || { echo "could not start container $i" >&2; exit 1; }
    ids+=("$id")
done
copy_process() { # copy_process ID N: the host PID of the container's own process (0) or a second one (1)
    local main
    main=$(docker inspect -f '{{.State.Pid}}' "$1")
    if [ "$2" = 0 ]; then echo "$main"; return; fi
    docker exec -d "$1" sleep 100000
    for _ in $(seq 50); do
        # `docker top` lists host PIDs; the one that is not the container's own is the exec'd one.
        other=$(docker top "$1" -o pid | tail -n +2 | grep -vx "$main" | head -1 || true)
        [ -n "$other" ] && { echo "$other"; return; }
        sleep 0.1
    done
    echo "no second process in $1" >&2
    exit 1
}
{
    for g in $(seq 0 $((gpus - 1))); do
        echo "device $g uuid=GPU-overhead-$g util=$((40 + g)) mem_used=$(((g + 10) << 30)) mem_total=$((80 << 30))"
    done
    for i in $(seq 0 $((gpus * 2 - 1))); do
        if [ "$copies_per_gpu" = 2 ]; then
            pid=$(docker inspect -f '{{.State.Pid}}' "${ids[$i]}")
        else
            pid=$(copy_process "${ids[$((i / 2))]}" $((i % 2)))
        fi
        echo "process $((i / 2)) compute $pid $(((i % 2 + 4) << 30))"
        echo "sample $((i / 2)) $pid $((10 + i))"
    done
    [ "${NVML_CALLS:-0}" = 1 ] && echo "calls $work/nvml-calls-%p.log"
} >"$work/libnvidia-ml.so.1.script"

# ---- the three programs ----
agent_config() { # agent_config N: the config of the Nth agent binary
    cat <<EOF
[endpoint]
name = "overhead-bench"
instance_id = "overhead-bench"
instance_type = "ml.p4d.24xlarge"
[metrics]
enhanced = true
publish_frequency_seconds = 60
sample_interval_ms = 1000
[output]
format = "emf"
emf_destination = "file:$work/emf-$1.jsonl"
[gpu]
nvml_library = "$work/libnvidia-ml.so.1"
[docker]
component_label = "$run_id"
component_env = "EMA_OVERHEAD_$$"
[admin]
enabled = false
EOF
}
cat >"$work/collectd.conf" <<EOF
Interval 1
BaseDir "$work/collectd"
PIDFile "$work/collectd.pid"
PluginDir "/usr/lib/collectd"
LoadPlugin cpu
LoadPlugin memory
LoadPlugin df
EOF
mkdir -p "$work/collectd"
names=()
procs=()
for a in "${!bins[@]}"; do
    agent_config "$a" >"$work/agent-$a.toml"
    AWS_EC2_METADATA_DISABLED=true "${bins[$a]}" run --config "$work/agent-$a.toml" \
        2>"$work/agent-$a.log" &
    pids+=("$!")
    procs+=("$!")
    names+=("agent $(basename "${bins[$a]}")")
done
agent=${procs[0]}
collectd -f -C "$work/collectd.conf" >"$work/collectd.log" 2>&1 &
collectd_pid=$!
pids+=("$collectd_pid")
prometheus-node-exporter --collector.disable-defaults --collector.cpu --collector.meminfo \
    --collector.filesystem --web.listen-address="127.0.0.1:$node_port" >"$work/node.log" 2>&1 &
node=$!
pids+=("$node")
(while sleep 1; do curl -s -o /dev/null "http://127.0.0.1:$node_port/metrics"; done) &
pids+=("$!")

sleep "$warmup_seconds" # start-up (NVML load, Docker discovery) is not the steady state
names+=(collectd node_exporter)
procs+=("$collectd_pid" "$node")
for p in "${procs[@]}"; do
    kill -0 "$p" 2>/dev/null || { echo "a program did not start; logs in $work" >&2; KEEP=1; exit 1; }
done

run_ns() { cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{s += $1} END {printf "%d", s}'; }
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
threads() { ls /proc/"$1"/task | wc -l; }
declare -A ns0 ns1 t0 t1 th0 th1 hwm
load0=$(cut -d' ' -f1-3 /proc/loadavg)
for k in "${!procs[@]}"; do
    p=${procs[$k]}
    ns0[$k]=$(run_ns "$p"); t0[$k]=$(ticks "$p"); th0[$k]=$(threads "$p")
done
calls_lines() { # calls_lines PID: the lines the fake library has written for that agent so far
    if [ -f "$work/nvml-calls-$1.log" ]; then wc -l <"$work/nvml-calls-$1.log"; else echo 0; fi
}
declare -A calls0 calls1
for a in "${!bins[@]}"; do calls0[$a]=$(calls_lines "${procs[$a]}"); done
wall0=$(date +%s%N)
sleep "$duration"
for a in "${!bins[@]}"; do calls1[$a]=$(calls_lines "${procs[$a]}"); done
for k in "${!procs[@]}"; do
    p=${procs[$k]}
    kill -0 "$p" 2>/dev/null || {
        echo "${names[$k]} (pid $p) exited during the run; logs in $work" >&2
        KEEP=1
        exit 1
    }
    ns1[$k]=$(run_ns "$p"); t1[$k]=$(ticks "$p"); th1[$k]=$(threads "$p")
    hwm[$k]=$(awk '/^VmHWM/ {print $2}' "/proc/$p/status")
done
wall1=$(date +%s%N)
load1=$(cut -d' ' -f1-3 /proc/loadavg)

# ---- the syscall phase ----
events='raw_syscalls:sys_enter,syscalls:sys_enter_execve'
for k in "${!procs[@]}"; do
    perf stat -x, -o "$work/perf-$k.csv" -e "$events" \
        -e task:task_newtask --filter '!(clone_flags & 0x10000)' \
        -e task:task_newtask -p "${procs[$k]}" -- sleep "$syscall_seconds" 2>/dev/null &
done
wait_perf() { while pgrep -f "perf stat -x, -o $work/perf-" >/dev/null; do sleep 1; done; }
sleep "$syscall_seconds"
wait_perf
count() { # count FILE N: the Nth counted event's value
    grep -v '^#' "$1" | grep -v '^$' | sed -n "$2p" | cut -d, -f1
}

clk_tck=$(getconf CLK_TCK)
wall_s=$(awk -v a="$wall0" -v b="$wall1" 'BEGIN {printf "%.3f", (b - a) / 1e9}')
echo
echo "side by side, $(date -u +%FT%TZ), $(nproc) CPUs, measured ${wall_s} s (load average $load0 at the start, $load1 at the end), syscall phase ${syscall_seconds} s after it"
printf '| process | CPU, share of one core (schedstat ns) | cross-check: stat ticks | peak RSS (VmHWM) | syscalls/s | processes forked | execs | threads made (start/end count) |\n'
printf '|---|---|---|---|---|---|---|---|\n'
for k in "${!procs[@]}"; do
    csv="$work/perf-$k.csv"
    sys=$(count "$csv" 1); exe=$(count "$csv" 2); forks=$(count "$csv" 3); tasks=$(count "$csv" 4)
    awk -v n="${names[$k]}" -v a="${ns0[$k]}" -v b="${ns1[$k]}" -v w="$wall_s" \
        -v ta="${t0[$k]}" -v tb="${t1[$k]}" -v hz="$clk_tck" -v hwm="${hwm[$k]}" \
        -v sys="$sys" -v s="$syscall_seconds" -v exe="$exe" -v forks="$forks" -v tasks="$tasks" \
        -v tha="${th0[$k]}" -v thb="${th1[$k]}" 'BEGIN {
            printf "| %s | %.4f %% (%.3f s) | %.4f %% | %.1f MB (%.1f MiB) | %.1f | %s | %s | %s (%s/%s) |\n",
                n, 100 * (b - a) / 1e9 / w, (b - a) / 1e9, 100 * (tb - ta) / hz / w,
                hwm * 1024 / 1e6, hwm / 1024, sys / s, forks, exe, tasks - forks, tha, thb }'
done
# The scenario really ran: what each agent published.
echo
for a in "${!bins[@]}"; do
    emf="$work/emf-$a.jsonl"
    echo "${names[$a]}: $(wc -l <"$emf") EMF documents in $(stat -c %s "$emf") bytes;" \
        "naming a GPU: $(grep -c '"GpuId"' "$emf" || true)," \
        "a container: $(grep -c '"ContainerId"' "$emf" || true)"
    grep -E 'WARN|ERROR' "$work/agent-$a.log" | grep -v 'has neither label' | head -3 >&2 || true
done
if [ "${NVML_CALLS:-0}" = 1 ]; then
    echo
    echo "NVML calls per sample over the measured phase ($gpus GPUs, $copies_per_gpu copies per GPU; per symbol, summed over the GPUs):"
    for a in "${!bins[@]}"; do
        echo "${names[$a]}:"
        sed -n "$((calls0[$a] + 1)),${calls1[$a]}p" "$work/nvml-calls-${procs[$a]}.log" | awk '
            { samples++; for (i = 1; i <= NF; i++) { split($i, kv, "="); sub("/.*", "", kv[1]); n[kv[1]] += kv[2]; total += kv[2] } }
            END {
                if (samples == 0) { print "  no call lines (is the fake library counting?)"; exit }
                printf "  %d samples, %.2f calls per sample in all\n", samples, total / samples
                fflush()
                for (s in n) printf "  %-45s %8.2f\n", s, n[s] / samples | "sort"
            }'
    done
fi

# ---- the profile (PROFILE_SECONDS > 0): where the agent's time goes, kernel included ----
profile_seconds=${PROFILE_SECONDS:-0}
if [ "$profile_seconds" -gt 0 ]; then
    # A sample every 50 us of the agent's CPU time (cpu-clock counts only while it runs), with
    # DWARF call stacks (the release binary has no frame pointers). perf 6.1 cannot read this
    # binary's symbols (lld's segment layout), so scripts/perf-symbols.py resolves them with nm.
    perf record -q -e cpu-clock -c 50000 --call-graph dwarf,16384 -p "$agent" \
        -o "$work/agent.perf.data" -- sleep "$profile_seconds" 2>/dev/null || true
    perf script -i "$work/agent.perf.data" -F ip,sym,dso 2>/dev/null >"$work/agent.perf.script" || true
    echo
    echo "agent profile over ${profile_seconds} s (perf record -e cpu-clock -c 50000 --call-graph dwarf):"
    python3 scripts/perf-symbols.py "${bins[0]}" "$work/agent.perf.script" 30 60 || true
fi
