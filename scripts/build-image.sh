#!/usr/bin/env bash
# Builds the sidecar image from the Dockerfile, FROM the local base images scripts/setup/ops.sh
# makes (no registry is reachable here).
#
#   scripts/build-image.sh                      from source: the builder stage compiles the agent
#                                               (needs EMA_BUILDER_IMAGE=1 scripts/setup/ops.sh)
#   scripts/build-image.sh --prebuilt BINARY    the builder stage takes BINARY, built on this host
#                                               (Debian bookworm glibc, like the runtime base)
#   --tag TAG                                   default endpoint-metrics-agent:local
# EMA_DOCKER_BUILD_FLAGS: more `docker build` flags, e.g. "--cpuset-cpus 0 --cpu-shares 256" to
# keep a from-source build off the other cores.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
tag="endpoint-metrics-agent:local"
prebuilt=""
while [ $# -gt 0 ]; do
  case "$1" in
    --prebuilt) prebuilt="$2"; shift 2 ;;
    --tag) tag="$2"; shift 2 ;;
    *) echo "usage: $0 [--prebuilt BINARY] [--tag TAG]" >&2; exit 2 ;;
  esac
done

base="${EMA_BASE_IMAGE:-ema-debian-bookworm:local}"
rust="${EMA_RUST_IMAGE:-ema-rust-builder:local}"
"$repo/scripts/setup/ops.sh"

if [ -n "$prebuilt" ]; then
  # A small context: the Dockerfile, the image's configuration and the binary.
  ctx="$(mktemp -d)"
  trap 'rm -rf "$ctx"' EXIT
  cp "$repo/Dockerfile" "$ctx/"
  cp -r "$repo/docker" "$ctx/"
  mkdir "$ctx/prebuilt"
  cp "$prebuilt" "$ctx/prebuilt/endpoint-metrics-agent"
  # shellcheck disable=SC2086
  docker build ${EMA_DOCKER_BUILD_FLAGS:-} --build-arg "BASE_IMAGE=$base" --build-arg "RUST_IMAGE=$base" --build-arg PREBUILT=1 \
    -t "$tag" "$ctx"
else
  EMA_BUILDER_IMAGE=1 "$repo/scripts/setup/ops.sh"
  # shellcheck disable=SC2086
  docker build ${EMA_DOCKER_BUILD_FLAGS:-} --build-arg "BASE_IMAGE=$base" --build-arg "RUST_IMAGE=$rust" \
    -t "$tag" "$repo"
fi
echo "built $tag"
