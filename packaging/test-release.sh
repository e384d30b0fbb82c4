#!/usr/bin/env bash
# Checks the output of packaging/release.sh against what Semaphore's Go
# release holds, so everything that downloads agent_Linux_x86_64.tar.gz
# finds what it expects.
#
# Usage: packaging/test-release.sh DIST_DIR [LINUX_BIN]
set -euo pipefail
export LC_ALL=C
DIST=${1:?usage: $0 DIST_DIR [LINUX_BIN]}
BIN=${2:-}
failed=0
pass() { echo "PASS release: $*"; }
fail() { echo "FAIL release: $*"; failed=1; }
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

listing() { tar -tzvf "$1" | awk '{ print $1, $6 }' | sort -k2; }
want_linux=$'-rw-r--r-- LICENSE\n-rw-r--r-- README.md\n-rwxr-xr-x agent\n-rwxr-xr-x install.sh'
want_windows=$'-rw-r--r-- LICENSE\n-rw-r--r-- README.md\n-rwxr-xr-x agent.exe\n-rw-r--r-- install.ps1'
for a in Linux:"$want_linux" Windows:"$want_windows"; do
    os=${a%%:*}
    want=${a#*:}
    f=$DIST/agent_${os}_x86_64.tar.gz
    got=$(listing "$f" 2>&1 || true)
    [ "$got" = "$want" ] && pass "agent_${os}_x86_64.tar.gz holds $(awk '{print $2}' <<<"$got" | tr '\n' ' ')" ||
        fail "agent_${os}_x86_64.tar.gz holds: $got"
done
# goreleaser's checksum file: sha256sum's "<64 hex>  <name>" lines.
if grep -qvE '^[0-9a-f]{64}  agent_(Linux|Windows)_x86_64\.tar\.gz$' "$DIST/checksums.txt" ||
    [ "$(wc -l <"$DIST/checksums.txt")" != 2 ]; then
    fail "checksums.txt is not two sha256sum lines: $(cat "$DIST/checksums.txt")"
elif (cd "$DIST" && sha256sum --quiet -c checksums.txt); then
    pass "checksums.txt: two sha256sum lines that verify"
else
    fail "checksums.txt does not verify"
fi
# The archive's agent is the static binary, and says its version.
tar -C "$WORK" -xzf "$DIST/agent_Linux_x86_64.tar.gz"
file "$WORK/agent" | grep -Eq 'static(-pie)? linked' && pass "agent is static: $(file -b "$WORK/agent" | cut -d, -f1-2)" ||
    fail "agent is not static: $(file -b "$WORK/agent")"
if [ -n "$BIN" ]; then
    cmp -s "$BIN" "$WORK/agent" && pass "agent is the binary given ($("$WORK/agent" version))" || fail "agent differs from $BIN"
fi
cmp -s "$WORK/install.sh" "$(dirname "$0")/install.sh" && pass "install.sh is packaging/install.sh" || fail "install.sh differs"
[ $failed = 0 ] || exit 1
