#!/bin/sh
# The front door against nginx as a reverse proxy, same loopback run, same upstream.
#
# An upstream nginx answers `200 hello` from memory on 127.0.0.1:$UP_PORT. nginx (reverse proxy,
# keep-alive to the upstream) listens on $NGINX_PORT and the agent's front door on $AGENT_PORT,
# each with $THREADS worker(s). wrk drives each of direct / nginx / agent at 1 and 64 connections
# for $DURATION, and the script reports p50 and p99 latency, the added latency over direct, and CPU
# time per request of the proxy's own processes (utime + stime from /proc/<pid>/stat over the run;
# for nginx its workers, for the agent the whole process, sampling loop included), and each
# agent's RSS after start and its peak (VmHWM) over the run.
#
# CPUs: the proxy under test (nginx's workers, the agent) runs on $PROXY_CPUS, the upstream and wrk
# on $LOAD_CPUS, so both proxies see the same neighbours (default 1 and 0 on a 2-core machine).
#
# Not part of CI. Needs nginx and wrk (`apt-get install -y nginx wrk`) and a release build.
#   DURATION (default 10s)  THREADS (default 1)  BIN (default target/release/endpoint-metrics-agent)
#   BIN may name several binaries ("/tmp/before /tmp/after"): each runs as its own agent on the
#   next port, measured in turn after nginx in the same run.
#   ROUNDS (default 1): each connection count is measured this many times over, the targets in
#   turn each round, so the spread shows (the machine's neighbours move the figures).
#   CONNS (default "1 64"): the connection counts.
#   PROFILE_SECONDS=N (default 0): afterwards, profiles the agent and nginx's worker in turn with
#   `perf record` for N s each under a load of PROFILE_CONNS (default 64) connections, and
#   prints where each one's CPU went
#   (needs perf, from linux-perf; scripts/perf-symbols.py resolves the release binary's symbols).
#   KEEP=1 keeps the work folder (configs, logs, EMF, profiles) and prints its path.
#   scripts/proxy-bench-summary.py reads this script's output: each round against nginx's in the
#   same round, and the medians over the rounds.
# Run: sh scripts/proxy-bench.sh
set -eu

DURATION="${DURATION:-10s}"
ROUNDS="${ROUNDS:-1}"
CONNS="${CONNS:-1 64}"
THREADS="${THREADS:-1}"
BIN="${BIN:-target/release/endpoint-metrics-agent}"
UP_PORT="${UP_PORT:-18081}"
NGINX_PORT="${NGINX_PORT:-18082}"
AGENT_PORT="${AGENT_PORT:-18083}"
CLK_TCK="$(getconf CLK_TCK)"
PROXY_CPUS="${PROXY_CPUS:-1}"
LOAD_CPUS="${LOAD_CPUS:-0}"

command -v nginx >/dev/null || { echo "needs nginx (apt-get install -y nginx)" >&2; exit 1; }
command -v wrk >/dev/null || { echo "needs wrk (apt-get install -y wrk)" >&2; exit 1; }
for bin in $BIN; do [ -x "$bin" ] || { echo "needs $bin (cargo build --release)" >&2; exit 1; }; done

. "$(dirname "$0")/proxy-bench-confs.sh"
bench_workdir
bench_nginx "$DIR" "$UP_PORT" "$NGINX_PORT" "$THREADS" on

taskset -c "$LOAD_CPUS" nginx -c "$DIR/upstream.conf" -p "$DIR" & PIDS="$PIDS $!"
taskset -c "$PROXY_CPUS" nginx -c "$DIR/proxy.conf" -p "$DIR" & NGINX_MASTER=$!; PIDS="$PIDS $NGINX_MASTER"
# One agent per binary in BIN, on consecutive ports: "agent" alone, else "agent N (name)".
AGENTS=""; i=0
for bin in $BIN; do
    bench_agent "$DIR/agent$i.toml" $((AGENT_PORT + i)) "$UP_PORT" "$THREADS" 10
    taskset -c "$PROXY_CPUS" "$bin" run --config "$DIR/agent$i.toml" 2> "$DIR/agent$i.log" & PIDS="$PIDS $!"
    AGENTS="$AGENTS $i:$!"; i=$((i + 1))
done
AGENT_COUNT=$i
sleep 1
for port in "$UP_PORT" "$NGINX_PORT" $(seq "$AGENT_PORT" $((AGENT_PORT + AGENT_COUNT - 1))); do
    curl -fsS "http://127.0.0.1:$port/" >/dev/null || { echo "nothing on $port" >&2; cat "$DIR"/*.log >&2; exit 1; }
done
kb() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; } # pid, VmRSS / VmHWM
for target in $AGENTS; do echo "${target#*:} $(kb "${target#*:}" VmRSS)" >> "$DIR/rss-start"; done

proxy_thread_ticks() { # utime+stime of an agent's front door threads (named "proxy") only
    t=0
    for f in /proc/"$1"/task/*/stat; do
        case "$(cat "$f" 2>/dev/null)" in
            *"(proxy)"*) set -- $(sed 's/^.*) //' "$f"); t=$((t + ${12} + ${13})) ;;
        esac
    done
    echo "$t"
}
cpu_ticks() { # sum of utime+stime over the pids given
    t=0
    for p in "$@"; do
        set -- $(sed 's/^.*) //' "/proc/$p/stat")
        # After the command name: field 3 is state, so utime (14) and stime (15) are $12 and $13.
        t=$((t + ${12} + ${13}))
    done
    echo "$t"
}
to_us() { # wrk's "123.45us" / "1.23ms" / "1.2s" to microseconds
    echo "$1" | awk '/us$/ {sub("us","");print $1+0;next} /ms$/ {sub("ms","");print $1*1000;next} /s$/ {sub("s","");print $1*1000000}'
}
agent_name() { # index
    if [ "$AGENT_COUNT" = 1 ]; then echo agent; else echo "agent $1 ($(basename "$(echo $BIN | cut -d' ' -f$(($1 + 1)))"))"; fi
}

printf '| target | connections | requests/s | p50 (µs) | p99 (µs) | p50 added (µs) | p99 added (µs) | CPU per request (µs) | of which front door threads (µs) |\n'
printf '|---|---|---|---|---|---|---|---|---|\n'
for conns in $CONNS; do
    round=1
    while [ "$round" -le "$ROUNDS" ]; do
    for target in direct nginx $AGENTS; do
        name=$target; agent=""
        case $target in
            direct) port=$UP_PORT; pids="" ;;
            nginx) port=$NGINX_PORT; pids="$(pgrep -P "$NGINX_MASTER" | tr '\n' ' ')" ;;
            *:*) n=${target%%:*}; agent=${target#*:}; port=$((AGENT_PORT + n)); pids=$agent; name=$(agent_name "$n") ;;
        esac
        # A short warm-up fills connection pools on both sides.
        taskset -c "$LOAD_CPUS" wrk -t1 -c"$conns" -d2s "http://127.0.0.1:$port/" >/dev/null
        before=0; [ -n "$pids" ] && before=$(cpu_ticks $pids)
        tbefore=0; [ -n "$agent" ] && tbefore=$(proxy_thread_ticks "$agent")
        out=$(taskset -c "$LOAD_CPUS" wrk -t1 -c"$conns" -d"$DURATION" --latency "http://127.0.0.1:$port/")
        after=0; [ -n "$pids" ] && after=$(cpu_ticks $pids)
        tafter=0; [ -n "$agent" ] && tafter=$(proxy_thread_ticks "$agent")
        requests=$(echo "$out" | awk '/requests in/ {print $1}')
        rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
        p50=$(to_us "$(echo "$out" | awk '$1=="50%" {print $2}')")
        p99=$(to_us "$(echo "$out" | awk '$1=="99%" {print $2}')")
        if [ "$target" = direct ]; then
            d50=$p50; d99=$p99; added50="-"; added99="-"; cpu="-"; tcpu="-"
        else
            added50=$(awk -v a="$p50" -v b="$d50" 'BEGIN {printf "%.0f", a-b}')
            added99=$(awk -v a="$p99" -v b="$d99" 'BEGIN {printf "%.0f", a-b}')
            cpu=$(awk -v t=$((after - before)) -v hz="$CLK_TCK" -v n="$requests" 'BEGIN {printf "%.2f", t/hz*1e6/n}')
            tcpu="-"
            [ -n "$agent" ] && tcpu=$(awk -v t=$((tafter - tbefore)) -v hz="$CLK_TCK" -v n="$requests" 'BEGIN {printf "%.2f", t/hz*1e6/n}')
        fi
        printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$name" "$conns" "$rps" "$p50" "$p99" "$added50" "$added99" "$cpu" "$tcpu"
    done
    round=$((round + 1))
    done
done
profile_seconds="${PROFILE_SECONDS:-0}"
PROFILE_CONNS="${PROFILE_CONNS:-64}"
if [ "$profile_seconds" -gt 0 ]; then
    for target in agent nginx; do
        case $target in
            nginx) port=$NGINX_PORT; pid="$(pgrep -P "$NGINX_MASTER" | head -n1)" ;;
            agent) port=$AGENT_PORT; pid="${AGENTS#* 0:}"; pid="${pid%% *}" ;;
        esac
        taskset -c "$LOAD_CPUS" wrk -t1 -c"$PROFILE_CONNS" -d"$((profile_seconds + 3))s" "http://127.0.0.1:$port/" >"$DIR/$target.wrk" &
        WRK=$!
        sleep 1
        # DWARF call stacks: the release binary has no frame pointers.
        perf record -q -e cpu-clock -c 50000 --call-graph dwarf,16384 -p "$pid" \
            -o "$DIR/$target.perf.data" -- sleep "$profile_seconds" 2>/dev/null || true
        wait "$WRK" || true
        perf script -i "$DIR/$target.perf.data" -F ip,sym,dso 2>/dev/null >"$DIR/$target.perf.script" || true
        echo
        echo "$target profile, $PROFILE_CONNS connection(s), ${profile_seconds} s (perf record -e cpu-clock -c 50000 --call-graph dwarf):"
        binary="${BIN%% *}"; [ "$target" = nginx ] && binary="$(command -v nginx)"
        python3 "$(dirname "$0")/perf-symbols.py" "$binary" "$DIR/$target.perf.script" 40 60 || true
        # One sample per 50 µs on the CPU: samples x 50 µs over the requests wrk made in the
        # recorded seconds (at its mean rate over its whole run), perf's own cost included.
        python3 "$(dirname "$0")/perf-symbols.py" --by-crate "$binary" "$DIR/$target.perf.script" \
            > "$DIR/$target.crates" || true
        tail -n +2 "$DIR/$target.crates"
        rps=$(awk '/Requests\/sec/ {print $2}' "$DIR/$target.wrk")
        samples=$(awk '/ samples$/ {print $1}' "$DIR/$target.crates")
        awk -v s="${samples:-0}" -v r="${rps:-0}" -v t="$profile_seconds" \
            'BEGIN { if (r > 0) printf "%.0f requests/s under the profile: about %.2f µs of CPU per request\n", r, s * 50 / (r * t) }'
    done
fi
echo
for target in $AGENTS; do
    pid=${target#*:}
    start=$(awk -v p="$pid" '$1 == p {print $2}' "$DIR/rss-start")
    echo "$(agent_name "${target%%:*}"): RSS after start (one request) $(awk -v k="$start" 'BEGIN {printf "%.1f", k/1024}') MiB, peak $(awk -v k="$(kb "$pid" VmHWM)" 'BEGIN {printf "%.1f", k/1024}') MiB"
done
emf_bytes=$(cat "$DIR"/agent*.toml.emf.jsonl 2>/dev/null | wc -c)
echo
echo "(agent: $THREADS worker thread(s); nginx: $THREADS worker process(es); both on CPUs $PROXY_CPUS, upstream and wrk (1 thread) on $LOAD_CPUS; $DURATION per run, $ROUNDS round(s); the agents wrote $emf_bytes bytes of EMF)"
