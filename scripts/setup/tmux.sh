#!/usr/bin/env bash
# tmux, the real terminal tests/top.rs drives `top` in (send-keys, capture-pane).
# Idempotent: nothing to do when tmux is installed. Run as root on Debian.
set -euo pipefail
if ! command -v tmux >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends tmux
fi
