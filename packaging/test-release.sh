#!/usr/bin/env bash
# Checks the output of packaging/release.sh against what Semaphore's Go
# release holds, so everything that downloads agent_Linux_x86_64.tar.gz
# (or agent_Linux_arm64.tar.gz) finds what it expects.
#
# Usage: packaging/test-release.sh DIST_DIR [LINUX_BIN [LINUX_ARM64_BIN]]
set -euo pipefail
export LC_ALL=C
DIST=${1:?usage: $0 DIST_DIR [LINUX_BIN]}
BIN=${2:-}
ARM64_BIN=${3:-}
failed=0
pass() { echo "PASS release: $*"; }
fail() { echo "FAIL release: $*"; failed=1; }
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

listing() { tar -tzvf "$1" | awk '{ print $1, $6 }' | sort -k2; }
want_linux=$'-rw-r--r-- LICENSE\n-rw-r--r-- README.md\n-rwxr-xr-x agent\n-rwxr-xr-x install.sh'
want_windows=$'-rw-r--r-- LICENSE\n-rw-r--r-- README.md\n-rwxr-xr-x agent.exe\n-rw-r--r-- install.ps1'
for a in Linux_x86_64:"$want_linux" Linux_arm64:"$want_linux" Windows_x86_64:"$want_windows"; do
    name=agent_${a%%:*}.tar.gz
    want=${a#*:}
    got=$(listing "$DIST/$name" 2>&1 || true)
    [ "$got" = "$want" ] && pass "$name holds $(awk '{print $2}' <<<"$got" | tr '\n' ' ')" ||
        fail "$name holds: $got"
done
# goreleaser's checksum file: sha256sum's "<64 hex>  <name>" lines, sorted
# by name.
want_names=$'agent_Linux_arm64.tar.gz\nagent_Linux_x86_64.tar.gz\nagent_Windows_x86_64.tar.gz'
if grep -qvE '^[0-9a-f]{64}  agent_(Linux_x86_64|Linux_arm64|Windows_x86_64)\.tar\.gz$' "$DIST/checksums.txt" ||
    [ "$(awk '{print $2}' "$DIST/checksums.txt")" != "$want_names" ]; then
    fail "checksums.txt is not the three archives' sha256sum lines: $(cat "$DIST/checksums.txt")"
elif (cd "$DIST" && sha256sum --quiet -c checksums.txt); then
    pass "checksums.txt: three sha256sum lines that verify ($(grep -c arm64 "$DIST/checksums.txt") for arm64)"
else
    fail "checksums.txt does not verify"
fi
# Each archive's agent is the static binary of its architecture, and says
# its version (the aarch64 one through qemu-user unless the host is one).
ARM64_RUN=()
[ "$(uname -m)" = aarch64 ] || ARM64_RUN=(qemu-aarch64-static)
for a in x86_64:x86-64:"$BIN" arm64:"ARM aarch64":"$ARM64_BIN"; do
    arch=${a%%:*}
    rest=${a#*:}
    word=${rest%%:*}
    given=${rest#*:}
    run=()
    [ "$arch" = x86_64 ] || run=("${ARM64_RUN[@]}")
    mkdir -p "$WORK/$arch"
    tar -C "$WORK/$arch" -xzf "$DIST/agent_Linux_$arch.tar.gz"
    desc=$(file -b "$WORK/$arch/agent")
    [[ $desc == *", $word,"* && $desc =~ (static-pie|statically)\ linked ]] &&
        pass "$arch agent is static $word: $(cut -d, -f1-2 <<<"$desc"), $(stat -c %s "$WORK/$arch/agent") bytes" ||
        fail "$arch agent is not a static $word binary: $desc"
    if [ -n "$given" ]; then
        cmp -s "$given" "$WORK/$arch/agent" && pass "$arch agent is the binary given ($("${run[@]}" "$WORK/$arch/agent" version))" ||
            fail "$arch agent differs from $given"
    fi
    cmp -s "$WORK/$arch/install.sh" "$(dirname "$0")/install.sh" && pass "$arch install.sh is packaging/install.sh" ||
        fail "$arch install.sh differs"
done
[ $failed = 0 ] || exit 1
