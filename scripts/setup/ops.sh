#!/usr/bin/env bash
# Set-up for the ops tests (issue 8): systemd-analyze for the unit-file test, and the local base
# images the Dockerfile builds FROM (no container registry is reachable, so nothing is pulled).
#
# Idempotent: what exists is kept. Run as root on Debian bookworm.
#   scripts/setup/ops.sh            systemd-analyze + runtime base image (ema-debian-bookworm:local)
#   EMA_SYSTEMD_IMAGE=1 scripts/setup/ops.sh
#                                   also ema-systemd-test:local: Debian with systemd as PID 1, to run
#                                   the unit under a real systemd (tests/ops/systemd.rs, EMA_SYSTEMD_CONTAINER_TEST=1)
#   EMA_BUILDER_IMAGE=1 scripts/setup/ops.sh
#                                   also the builder base (ema-rust-builder:local): Debian + gcc + the
#                                   host's Rust toolchain and crate cache, for a from-source image build
# Environment:
#   EMA_BASE_IMAGE      tag of the runtime base         (default ema-debian-bookworm:local)
#   EMA_RUST_IMAGE      tag of the builder base          (default ema-rust-builder:local)
#   EMA_SYSTEMD_IMAGE_TAG  tag of the systemd image      (default ema-systemd-test:local)
#   EMA_DEBIAN_MIRROR   mirror for debootstrap           (default: the first deb.debian.org-style URI apt uses)
set -euo pipefail

BASE_IMAGE="${EMA_BASE_IMAGE:-ema-debian-bookworm:local}"
RUST_IMAGE="${EMA_RUST_IMAGE:-ema-rust-builder:local}"
SYSTEMD_IMAGE="${EMA_SYSTEMD_IMAGE_TAG:-ema-systemd-test:local}"
WORK="${EMA_OPS_WORK:-/var/tmp/ema-ops}"

apt_updated=0
apt_install() {
  if [ "$apt_updated" = 0 ]; then
    apt-get update -qq
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

if ! command -v systemd-analyze >/dev/null 2>&1; then
  apt_install systemd
fi

# The mirror apt already uses here (deb822 or one-line sources), else deb.debian.org.
mirror() {
  if [ -n "${EMA_DEBIAN_MIRROR:-}" ]; then
    echo "$EMA_DEBIAN_MIRROR"
    return
  fi
  local uri
  uri=$(grep -h -E '^(URIs:|deb )' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
    | grep -o 'http[s]*://[^ ]*/debian/*' | grep -v security | head -n1 || true)
  echo "${uri:-http://deb.debian.org/debian}"
}

# debootstrap ROOTFS_DIR [--include=...]: a minimal bookworm root file system.
make_rootfs() {
  local dir="$1"
  shift
  if [ -f "$dir/.complete" ]; then
    return
  fi
  command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap
  rm -rf "$dir"
  mkdir -p "$dir"
  debootstrap --variant=minbase "$@" bookworm "$dir" "$(mirror)"
  rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
  touch "$dir/.complete"
}

if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  make_rootfs "$WORK/rootfs-runtime"
  tar -C "$WORK/rootfs-runtime" --exclude=./.complete --numeric-owner -c . \
    | docker import --change 'CMD ["/bin/bash"]' - "$BASE_IMAGE"
  echo "imported $BASE_IMAGE"
fi

if [ "${EMA_SYSTEMD_IMAGE:-0}" = 1 ] && ! docker image inspect "$SYSTEMD_IMAGE" >/dev/null 2>&1; then
  make_rootfs "$WORK/rootfs-systemd" --include=systemd,systemd-sysv,dbus
  tar -C "$WORK/rootfs-systemd" --exclude=./.complete --numeric-owner -c . \
    | docker import --change 'CMD ["/sbin/init"]' - "$SYSTEMD_IMAGE"
  echo "imported $SYSTEMD_IMAGE"
fi

if [ "${EMA_BUILDER_IMAGE:-0}" = 1 ] && ! docker image inspect "$RUST_IMAGE" >/dev/null 2>&1; then
  make_rootfs "$WORK/rootfs-builder" --include=gcc,libc6-dev,pkg-config
  toolchain="$(rustc --print sysroot)"
  # rustc, cargo and the x86_64 standard library only: docs, sources and other tools stay behind.
  mkdir -p "$WORK/rootfs-builder/opt/rust"
  tar -C "$toolchain" --exclude=./share/doc --exclude=./lib/rustlib/src --exclude='./lib/rustlib/*/analysis' \
    -c bin/rustc bin/cargo lib share/zsh 2>/dev/null | tar -C "$WORK/rootfs-builder/opt/rust" -x || true
  # The crate cache, so the image builds with --offline (crates.io is not reachable from containers).
  mkdir -p "$WORK/rootfs-builder/opt/cargo"
  cp -a "${CARGO_HOME:-$HOME/.cargo}/registry" "$WORK/rootfs-builder/opt/cargo/"
  tar -C "$WORK/rootfs-builder" --exclude=./.complete --numeric-owner -c . \
    | docker import \
      --change 'ENV PATH=/opt/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'ENV CARGO_HOME=/opt/cargo' \
      --change 'ENV CARGO_NET_OFFLINE=true' \
      - "$RUST_IMAGE"
  echo "imported $RUST_IMAGE"
fi
