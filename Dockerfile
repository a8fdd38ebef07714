# endpoint-metrics-agent as a sidecar container. Build with scripts/build-image.sh; run with the
# `docker run` line in docs/ops.md (host PID namespace, host root and cgroup tree read-only, the
# Docker socket, the GPUs, the configuration).
#
# No registry is reachable where this is built and tested, so both bases are local images made by
# scripts/setup/ops.sh from a debootstrapped Debian bookworm (glibc: NVML is dlopen()ed at run
# time, which a static musl binary cannot do):
#   BASE_IMAGE  runtime base: Debian bookworm minbase
#   RUST_IMAGE  builder base: the same plus gcc and the Rust toolchain and crate cache (offline)
# PREBUILT=1 skips compiling in the builder stage and takes prebuilt/endpoint-metrics-agent from
# the build context instead (a binary built on the host for the same glibc); the runtime stage is
# the same either way. (The legacy builder, the only one without buildx, runs every stage, so the
# choice is an argument rather than a second target.)
ARG BASE_IMAGE=ema-debian-bookworm:local
ARG RUST_IMAGE=ema-rust-builder:local

FROM ${RUST_IMAGE} AS builder
ARG PREBUILT=0
WORKDIR /src
COPY . .
RUN set -eu; \
    if [ "$PREBUILT" = 1 ]; then \
        install -D -m 0755 prebuilt/endpoint-metrics-agent /out/endpoint-metrics-agent; \
    else \
        cargo build --release --locked --offline --bin endpoint-metrics-agent; \
        install -D -m 0755 target/release/endpoint-metrics-agent /out/endpoint-metrics-agent; \
    fi; \
    /out/endpoint-metrics-agent --version

FROM ${BASE_IMAGE} AS runtime
# A fixed, unprivileged user. Reading the Docker socket needs its group on the host:
# docker run --group-add "$(stat -c %g /var/run/docker.sock)".
RUN groupadd --system --gid 10001 ema \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin ema
COPY --from=builder /out/endpoint-metrics-agent /usr/local/bin/endpoint-metrics-agent
COPY docker/agent.toml /etc/endpoint-metrics-agent/agent.toml
USER 10001:10001
# /healthz from inside the container (the admin endpoint listens on the container's loopback by
# default); no curl in the image, the agent asks itself.
HEALTHCHECK --interval=15s --timeout=5s --start-period=15s --retries=3 \
    CMD ["/usr/local/bin/endpoint-metrics-agent", "healthcheck", "--config", "/etc/endpoint-metrics-agent/agent.toml"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/endpoint-metrics-agent"]
CMD ["run", "--config", "/etc/endpoint-metrics-agent/agent.toml"]
