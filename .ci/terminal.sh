#!/usr/bin/env bash
# What tests/integration/debug.rs needs on a fresh machine: tmux, the real
# terminal its tests type into (`semaphore-agent debug`). With CI=true those
# tests fail without it.
set -euo pipefail

if command -v tmux >/dev/null 2>&1; then
    echo "tmux already installed: $(tmux -V)"
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -o DPkg::Lock::Timeout=600 -y -qq --no-install-recommends tmux >/dev/null
tmux -V
