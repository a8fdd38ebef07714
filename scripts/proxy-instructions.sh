#!/bin/sh
# User-space instructions per request: the front door against nginx as a reverse proxy, each
# under valgrind's callgrind, same upstream, same load. A count, not a time: it does not move
# with the machine's neighbours as `scripts/proxy-bench.sh`'s CPU times do (5-30 % from round to
# round on a shared VM), so a change of a few percent in user space shows in one run.
#
# What it does not see: the kernel's share (about 70 % of either proxy's CPU on loopback; both
# make the same system calls per request, `docs/performance.md`), and how fast the instructions
# run (cache misses, branch prediction). Under valgrind both proxies run about 50 times slower,
# so at 64 connections each wake-up finds more requests waiting than it would natively: the
# figure there is the cost with that much batching. At 1 connection there is no batching to
# distort: every request is one wake-up for its request and one for its answer.
#
# An upstream nginx (1 worker, natively) answers `200 hello`; nginx (1 worker, `master_process
# off` so that callgrind sees the worker) and each agent (`worker_threads = 1`) proxy to it, each
# under `valgrind --tool=callgrind`. For each connection count and target: a 2 s warm-up, the
# counters zeroed (`callgrind_control -z`), `wrk -t1 -cN -d$DURATION`, a dump; instructions over
# the requests wrk made, for the whole process (the agent's sampling loop included: about 100
# instructions a request at these rates; its windows are 300 s, so that no window's encoding
# lands in one run and not in another).
#
# Needs valgrind, nginx and wrk (`apt-get install -y valgrind nginx wrk`). Valgrind 3.19 cannot
# map a binary linked by rust-lld with its default layout (every instruction then lands in
# `clone`): counts are right either way; for names, build with
#   RUSTFLAGS="-C link-arg=-Wl,--no-rosegment" CARGO_TARGET_DIR=target-vg cargo build --release
# and read a dump with `callgrind_annotate` (KEEP=1 keeps them).
#   DURATION (default 10s)  CONNS (default "1 64")  BIN (default target/release/endpoint-metrics-agent,
#   several allowed: "/tmp/before /tmp/after")  KEEP=1 keeps the work folder.
# Run: sh scripts/proxy-instructions.sh
set -eu

DURATION="${DURATION:-10s}"
CONNS="${CONNS:-1 64}"
BIN="${BIN:-target/release/endpoint-metrics-agent}"
UP_PORT="${UP_PORT:-18181}"
NGINX_PORT="${NGINX_PORT:-18182}"
AGENT_PORT="${AGENT_PORT:-18183}"

for tool in valgrind callgrind_control nginx wrk; do
    command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install -y valgrind nginx wrk)" >&2; exit 1; }
done
for bin in $BIN; do [ -x "$bin" ] || { echo "needs $bin (cargo build --release)" >&2; exit 1; }; done

. "$(dirname "$0")/proxy-bench-confs.sh"
bench_workdir
bench_nginx "$DIR" "$UP_PORT" "$NGINX_PORT" 1 off

nginx -c "$DIR/upstream.conf" -p "$DIR" & PIDS="$PIDS $!"
valgrind --tool=callgrind --callgrind-out-file="$DIR/nginx.cg.%p" \
    nginx -c "$DIR/proxy.conf" -p "$DIR" 2> "$DIR/nginx.valgrind.log" & NGINX=$!; PIDS="$PIDS $NGINX"
TARGETS="nginx:$NGINX_PORT:$NGINX"
i=0
for bin in $BIN; do
    port=$((AGENT_PORT + i))
    bench_agent "$DIR/agent$i.toml" "$port" "$UP_PORT" 1 300
    valgrind --tool=callgrind --callgrind-out-file="$DIR/agent$i.cg.%p" \
        "$bin" run --config "$DIR/agent$i.toml" 2> "$DIR/agent$i.valgrind.log" & pid=$!; PIDS="$PIDS $pid"
    name="agent"; [ "$(echo $BIN | wc -w)" -gt 1 ] && name="agent-$(basename "$bin")"
    TARGETS="$TARGETS $name:$port:$pid"
    i=$((i + 1))
done

# Under valgrind, start-up takes seconds.
for target in $TARGETS; do
    port=$(echo "$target" | cut -d: -f2)
    tries=0
    until curl -fsS "http://127.0.0.1:$port/" >/dev/null 2>&1; do
        tries=$((tries + 1))
        [ "$tries" -lt 60 ] || { echo "nothing on $port" >&2; cat "$DIR"/*.log >&2; exit 1; }
        sleep 0.5
    done
done

printf '| target | connections | requests | user-space instructions per request | against nginx |\n'
printf '|---|---|---|---|---|\n'
for conns in $CONNS; do
    nginx_per=""
    for target in $TARGETS; do
        name=$(echo "$target" | cut -d: -f1)
        port=$(echo "$target" | cut -d: -f2)
        pid=$(echo "$target" | cut -d: -f3)
        wrk -t1 -c"$conns" -d2s "http://127.0.0.1:$port/" >/dev/null
        callgrind_control -z "$pid" >/dev/null 2>&1
        out=$(wrk -t1 -c"$conns" -d"$DURATION" "http://127.0.0.1:$port/")
        callgrind_control -d "$pid" >/dev/null 2>&1
        sleep 0.5
        requests=$(echo "$out" | awk '/requests in/ {print $1}')
        # Only answers the upstream gave count: an error answer is a cheaper request.
        if echo "$out" | grep -q "Non-2xx"; then
            echo "$name: answers that are not 2xx: $(echo "$out" | grep Non-2xx)" >&2
            exit 1
        fi
        # The newest dump of this process (one file for all its threads).
        dump=$(ls -t "$DIR"/*.cg."$pid".* | head -n1)
        instructions=$(awk '/^summary:/ {print $2}' "$dump")
        per=$(awk -v i="$instructions" -v r="$requests" 'BEGIN {printf "%.0f", i / r}')
        against="-"
        if [ "$name" = nginx ]; then
            nginx_per=$per
        else
            against=$(awk -v a="$per" -v n="$nginx_per" 'BEGIN {printf "%+.1f %%", (a / n - 1) * 100}')
        fi
        printf '| %s | %s | %s | %s | %s |\n' "$name" "$conns" "$requests" "$per" "$against"
    done
done
echo
echo "(valgrind $(valgrind --version | sed 's/valgrind-//'), callgrind; $DURATION per run; wrk 1 thread; the upstream natively)"
