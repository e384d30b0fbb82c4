#!/usr/bin/env bash
# A Debian bookworm root filesystem made here (no registry pull): the base of
# the images (`docker import`) and the sandbox root the installer tests run
# install.sh in. debootstrap --variant=minbase plus what the agent's image
# ships: bash, CA certificates (Debian's Mozilla bundle, never this
# machine's own CAs), curl and procps (no kubectl: the Kubernetes executor
# needs none).
#
# Usage: packaging/base-rootfs.sh
#   Prints the path of the rootfs tarball on the last line. It is cached in
#   $SEMAPHORE_CI_IMAGES (default /var/tmp/semaphore-ci-images) under a name
#   that carries this script's hash, so a changed package list rebuilds it
#   and a rerun takes no time. Needs root and apt's mirror.
set -euo pipefail

CACHE=${SEMAPHORE_CI_IMAGES:-/var/tmp/semaphore-ci-images}
HERE=$(cd "$(dirname "$0")" && pwd)
INCLUDE=ca-certificates,curl,procps
hash=$(sha256sum "$HERE/base-rootfs.sh" | cut -c1-12)
OUT=$CACHE/bookworm-agent-base-$hash.tar
log() { echo "base-rootfs: $*" >&2; }

if [ -s "$OUT" ]; then
    log "cached: $OUT"
    echo "$OUT"
    exit 0
fi
command -v debootstrap >/dev/null || {
    log "installing debootstrap"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null 2>&1 ||
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; }
}
# The mirror apt uses on this machine (deb822 or one-line sources).
mirror=$(sed -n 's/^URIs: *\([^ ]*\/debian\)$/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1)
[ -n "$mirror" ] || mirror=$(awk '$1 == "deb" && $3 == "bookworm" { print $2; exit }' /etc/apt/sources.list 2>/dev/null)
mirror=${mirror:-http://deb.debian.org/debian}
mkdir -p "$CACHE"
work=$(mktemp -d "$CACHE/rootfs.XXXXXX")
trap 'rm -rf "$work"' EXIT
start=$(date +%s)
log "debootstrap --variant=minbase bookworm from $mirror"
debootstrap --variant=minbase --include="$INCLUDE" bookworm "$work/root" "$mirror" >"$work/debootstrap.log" 2>&1 || {
    tail -20 "$work/debootstrap.log" >&2
    exit 1
}
# Smaller and reproducible enough: no apt lists, caches or logs; the
# mirror in sources.list is Debian's public one.
rm -rf "$work/root/var/cache/apt/archives/"*.deb "$work/root/var/lib/apt/lists/"* \
    "$work/root/var/log/"*.log "$work/root/var/cache/debconf/"*-old
echo "deb http://deb.debian.org/debian bookworm main" >"$work/root/etc/apt/sources.list"
tar -C "$work/root" --numeric-owner -cf "$work/base.tar" .
mv "$work/base.tar" "$OUT"
log "built $OUT ($(du -m "$OUT" | cut -f1) MB) in $(($(date +%s) - start))s"
echo "$OUT"
