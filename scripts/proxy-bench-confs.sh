# The configurations the front-door benches share: sourced by scripts/proxy-bench.sh and
# scripts/proxy-instructions.sh, so that both measure the same nginx and the same agent.

# bench_workdir: DIR, a new work folder, and PIDS, the processes to stop; both go when the
# script exits (KEEP=1 keeps the folder and prints its path).
bench_workdir() {
    DIR="$(mktemp -d)"
    PIDS=""
    trap bench_cleanup EXIT INT TERM
}

bench_cleanup() {
    for p in $PIDS; do kill "$p" 2>/dev/null || true; done
    sleep 0.5
    if [ "${KEEP:-0}" = 1 ]; then echo "kept $DIR" >&2; else rm -rf "$DIR"; fi
}

# bench_nginx DIR UP_PORT PROXY_PORT WORKERS MASTER: DIR/upstream.conf, an nginx answering
# `200 hello` from memory on UP_PORT (1 worker), and DIR/proxy.conf, nginx as a reverse proxy on
# PROXY_PORT to it (WORKERS workers, keep-alive to the upstream, no buffering; MASTER "off" runs
# the worker alone, in the foreground process).
bench_nginx() {
    bench_nginx_conf "$1" upstream 1 on \
        "server { listen 127.0.0.1:$2; location / { return 200 'hello\n'; } }"
    bench_nginx_conf "$1" proxy "$4" "$5" "upstream model { server 127.0.0.1:$2; keepalive 128; }
    server { listen 127.0.0.1:$3; location / {
        proxy_pass http://model; proxy_http_version 1.1; proxy_set_header Connection \"\";
        proxy_buffering off; } }"
}

bench_nginx_conf() { # dir, name, worker count, master_process, server block
    cat > "$1/$2.conf" <<CONF
worker_processes $3;
master_process $4;
daemon off;
pid $1/$2.pid;
error_log $1/$2.error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $1/$2-body;
    proxy_temp_path $1/$2-proxy;
    fastcgi_temp_path $1/$2-fcgi;
    uwsgi_temp_path $1/$2-uwsgi;
    scgi_temp_path $1/$2-scgi;
    keepalive_requests 1000000;
    $5
}
CONF
}

# bench_agent FILE PORT UP_PORT THREADS PUBLISH_SECONDS: an agent whose front door listens on
# PORT with THREADS threads and one static upstream at UP_PORT, EMF to FILE.emf.jsonl, nothing
# else on (no GPU, Docker or admin endpoint).
bench_agent() {
    cat > "$1" <<CONF
[endpoint]
name = "bench"
instance_id = "bench-host"
[metrics]
publish_frequency_seconds = $5
[output]
emf_destination = "file:$1.emf.jsonl"
[gpu]
enabled = false
[docker]
enabled = false
[admin]
enabled = false
[proxy]
enabled = true
listen = "127.0.0.1:$2"
worker_threads = $4
[[proxy.upstream]]
component = "bench"
url = "http://127.0.0.1:$3"
CONF
}
