#!/usr/bin/env bash
# A sanity figure, not a target and not a CI check: start → register, idle
# CPU and idle RSS of the static aarch64 agent under qemu-user next to the
# static x86_64 agent run natively, in the same run of examples/agent_bench
# (`--only 1,9 --compare AARCH64_BIN`: the two alternated against the same
# in-process hub on 127.0.0.1). The aarch64 binary runs through binfmt_misc
# (test-lib.sh's binfmt_aarch64, removed at exit), so the figures include the
# emulator. As a baseline for that, the VmRSS of an aarch64 busybox `sleep`
# under the same emulator, read while the bench idles.
#
# agent_bench measures the binary next to it (../semaphore-agent), so a
# scratch directory holds the example (a debug build: its hub and probe are
# the same for both binaries) and the x86_64 static agent.
#
# Usage: packaging/bench-arm64.sh X86_64_BIN AARCH64_BIN
#   X86_64_BIN   packaging/build-static.sh's output
#   AARCH64_BIN  packaging/build-static.sh --arch arm64's output
# Needs root (binfmt_misc). Prints agent_bench's table and the emulator line.
set -euo pipefail

X86=${1:?usage: $0 X86_64_BIN AARCH64_BIN}
A64=${2:?usage: $0 X86_64_BIN AARCH64_BIN}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
# shellcheck source=packaging/test-lib.sh
. "$HERE/test-lib.sh"
WORK=$(mktemp -d /tmp/agent-bench-arm64.XXXXXX)
SLEEPER=""
cleanup() {
    [ -z "$SLEEPER" ] || kill "$SLEEPER" 2>/dev/null || true
    wait 2>/dev/null || true
    binfmt_aarch64_down
    rm -rf "$WORK"
}
trap cleanup EXIT
[[ $(file -b "$X86") == *x86-64* ]] || { echo "bench-arm64: $X86 is not an x86-64 binary" >&2; exit 1; }
[[ $(file -b "$A64") == *"ARM aarch64"* ]] || { echo "bench-arm64: $A64 is not an aarch64 binary" >&2; exit 1; }
binfmt_aarch64 "$A64" || { echo "bench-arm64: $BINFMT_WHY" >&2; exit 1; }

(cd "$ROOT" && cargo build --locked --quiet --example agent_bench)
mkdir -p "$WORK/examples"
cp "$ROOT/target/debug/examples/agent_bench" "$WORK/examples/"
cp "$X86" "$WORK/semaphore-agent"
cp "$A64" "$WORK/semaphore-agent-aarch64"

# The emulator alone: an aarch64 busybox sleeping through the bench.
deb=$("$HERE/fetch-debs.sh" arm64 "${SEMAPHORE_CI_ARM64:-/var/tmp/semaphore-ci-arm64}/debs" busybox-static)
dpkg-deb -x "$deb" "$WORK/busybox"
"$WORK/busybox/bin/busybox" sleep 600 &
SLEEPER=$!

(cd "$WORK" && ./examples/agent_bench --only 1,9 --compare "$WORK/semaphore-agent-aarch64")
echo "emulator alone: aarch64 busybox sleep under $BINFMT_INTERP, VmRSS $(awk '/^VmRSS/ { printf "%.2f MB", $2 / 1024 }' "/proc/$SLEEPER/status")"
