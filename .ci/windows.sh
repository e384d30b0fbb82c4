#!/usr/bin/env bash
# CI for the Windows build: cross-build semaphore-agent.exe (and lint it
# for the Windows target), and install wine, so that `cargo test` (run
# after this by .ci/run) finds everything tests/integration/windows_wine.rs needs.
# Runs as root on a fresh Debian machine.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
need=()
[ -x /usr/lib/wine/wine64 ] || command -v wine64 >/dev/null || need+=(wine64)
command -v x86_64-w64-mingw32-gcc >/dev/null || need+=(gcc-mingw-w64-x86-64)
if [ ${#need[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
exe=$(packaging/build-windows.sh --clippy | tail -n 1)
echo "windows: built $exe ($(stat -c %s "$exe") bytes) in $(($(date +%s) - start))s"
