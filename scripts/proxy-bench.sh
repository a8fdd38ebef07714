#!/bin/sh
# The front door against nginx as a reverse proxy, same loopback run, same upstream.
#
# An upstream nginx answers `200 hello` from memory on 127.0.0.1:$UP_PORT. nginx (reverse proxy,
# keep-alive to the upstream) listens on $NGINX_PORT and the agent's front door on $AGENT_PORT,
# each with $THREADS worker(s). wrk drives each of direct / nginx / agent at 1 and 64 connections
# for $DURATION, and the script reports p50 and p99 latency, the added latency over direct, and CPU
# time per request of the proxy's own processes (utime + stime from /proc/<pid>/stat over the run;
# for nginx its workers, for the agent the whole process, sampling loop included).
#
# CPUs: the proxy under test (nginx's workers, the agent) runs on $PROXY_CPUS, the upstream and wrk
# on $LOAD_CPUS, so both proxies see the same neighbours (default 1 and 0 on a 2-core machine).
#
# Not part of CI. Needs nginx and wrk (`apt-get install -y nginx wrk`) and a release build.
#   DURATION (default 10s)  THREADS (default 1)  BIN (default target/release/endpoint-metrics-agent)
# Run: sh scripts/proxy-bench.sh
set -eu

DURATION="${DURATION:-10s}"
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
[ -x "$BIN" ] || { echo "needs $BIN (cargo build --release)" >&2; exit 1; }

DIR="$(mktemp -d)"
PIDS=""
cleanup() {
    for p in $PIDS; do kill "$p" 2>/dev/null || true; done
    sleep 0.5
    rm -rf "$DIR"
}
trap cleanup EXIT INT TERM

nginx_conf() { # name, worker count, server block
    cat > "$DIR/$1.conf" <<EOF
worker_processes $2;
daemon off;
pid $DIR/$1.pid;
error_log $DIR/$1.error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $DIR/$1-body;
    proxy_temp_path $DIR/$1-proxy;
    fastcgi_temp_path $DIR/$1-fcgi;
    uwsgi_temp_path $DIR/$1-uwsgi;
    scgi_temp_path $DIR/$1-scgi;
    keepalive_requests 1000000;
    $3
}
EOF
}

nginx_conf upstream 1 "server { listen 127.0.0.1:$UP_PORT; location / { return 200 'hello\n'; } }"
nginx_conf proxy "$THREADS" "upstream model { server 127.0.0.1:$UP_PORT; keepalive 128; }
    server { listen 127.0.0.1:$NGINX_PORT; location / {
        proxy_pass http://model; proxy_http_version 1.1; proxy_set_header Connection \"\";
        proxy_buffering off; } }"
cat > "$DIR/agent.toml" <<EOF
[endpoint]
name = "bench"
instance_id = "bench-host"
[metrics]
publish_frequency_seconds = 10
[output]
emf_destination = "file:$DIR/emf.jsonl"
[gpu]
enabled = false
[docker]
enabled = false
[admin]
enabled = false
[proxy]
enabled = true
listen = "127.0.0.1:$AGENT_PORT"
worker_threads = $THREADS
[[proxy.upstream]]
component = "bench"
url = "http://127.0.0.1:$UP_PORT"
EOF

taskset -c "$LOAD_CPUS" nginx -c "$DIR/upstream.conf" -p "$DIR" & PIDS="$PIDS $!"
taskset -c "$PROXY_CPUS" nginx -c "$DIR/proxy.conf" -p "$DIR" & NGINX_MASTER=$!; PIDS="$PIDS $NGINX_MASTER"
taskset -c "$PROXY_CPUS" "$BIN" run --config "$DIR/agent.toml" 2> "$DIR/agent.log" & AGENT=$!; PIDS="$PIDS $AGENT"
sleep 1
for port in "$UP_PORT" "$NGINX_PORT" "$AGENT_PORT"; do
    curl -fsS "http://127.0.0.1:$port/" >/dev/null || { echo "nothing on $port" >&2; cat "$DIR"/*.log >&2; exit 1; }
done

proxy_thread_ticks() { # utime+stime of the agent's front door threads (named "proxy") only
    t=0
    for f in /proc/"$AGENT"/task/*/stat; do
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

printf '| target | connections | requests/s | p50 (µs) | p99 (µs) | p50 added (µs) | p99 added (µs) | CPU per request (µs) | of which front door threads (µs) |\n'
printf '|---|---|---|---|---|---|---|---|---|\n'
for conns in 1 64; do
    for target in direct nginx agent; do
        case $target in
            direct) port=$UP_PORT; pids="" ;;
            nginx) port=$NGINX_PORT; pids="$(pgrep -P "$NGINX_MASTER" | tr '\n' ' ')" ;;
            agent) port=$AGENT_PORT; pids="$AGENT" ;;
        esac
        # A short warm-up fills connection pools on both sides.
        taskset -c "$LOAD_CPUS" wrk -t1 -c"$conns" -d2s "http://127.0.0.1:$port/" >/dev/null
        before=0; [ -n "$pids" ] && before=$(cpu_ticks $pids)
        tbefore=$(proxy_thread_ticks)
        out=$(taskset -c "$LOAD_CPUS" wrk -t1 -c"$conns" -d"$DURATION" --latency "http://127.0.0.1:$port/")
        after=0; [ -n "$pids" ] && after=$(cpu_ticks $pids)
        tafter=$(proxy_thread_ticks)
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
            [ "$target" = agent ] && tcpu=$(awk -v t=$((tafter - tbefore)) -v hz="$CLK_TCK" -v n="$requests" 'BEGIN {printf "%.2f", t/hz*1e6/n}')
        fi
        printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$target" "$conns" "$rps" "$p50" "$p99" "$added50" "$added99" "$cpu" "$tcpu"
    done
done
emf_bytes=$(wc -c < "$DIR/emf.jsonl" 2>/dev/null || echo 0)
echo
echo "(agent: $THREADS worker thread(s); nginx: $THREADS worker process(es); both on CPUs $PROXY_CPUS, upstream and wrk (1 thread) on $LOAD_CPUS; $DURATION per run; the agent wrote $emf_bytes bytes of EMF)"
