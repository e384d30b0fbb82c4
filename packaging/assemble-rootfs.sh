#!/usr/bin/env bash
# Assemble the root filesystem of the minimal ("scratch") agent image:
# the static agent, Debian's static bash, busybox's static applets and the
# Mozilla CA bundle, plus the few files a login shell expects. Used both by
# packaging/Dockerfile.scratch (inside its builder stage) and by
# packaging/rootfs-smoke.sh, so the image and the smoke test share one
# recipe.
#
# The tree is for the agent binary's own architecture (x86_64 or aarch64,
# read from the binary with `file`; --arch amd64|arm64 states it and must
# agree): bash-static and busybox-static are Debian's packages of that
# architecture (packaging/fetch-debs.sh, no dpkg --add-architecture). A
# foreign busybox is asked for its applet list through qemu-aarch64-static,
# so binfmt_misc need not be mounted.
#
# Usage: packaging/assemble-rootfs.sh [--arch amd64|arm64] DEST AGENT_BINARY
#   DEST must not exist or be empty. Needs apt-get (downloads the three
#   .deb files; installs nothing) and dpkg-deb. SEMAPHORE_ROOTFS_DEBS=DIR
#   keeps the downloaded .deb files there (CI's cache) instead of a
#   temporary directory.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
USAGE="usage: assemble-rootfs.sh [--arch amd64|arm64] DEST AGENT_BINARY"
WANT_ARCH=""
if [ "${1:-}" = --arch ]; then
    WANT_ARCH=${2:?$USAGE}
    shift 2
fi
DEST=${1:?$USAGE}
BIN=${2:?$USAGE}
DEBS=(bash-static busybox-static ca-certificates)
AGENT_UID=1000
die() { echo "assemble-rootfs: $*" >&2; exit 1; }

[ -f "$BIN" ] || die "no agent binary at $BIN"
if [ -e "$DEST" ] && [ -n "$(ls -A "$DEST")" ]; then
    die "$DEST is not empty"
fi
# The binary's architecture, in Debian's words.
desc=$(file -b "$BIN")
case "$desc" in
    *"ELF 64-bit LSB"*", x86-64,"*) ARCH=amd64 ;;
    *"ELF 64-bit LSB"*", ARM aarch64,"*) ARCH=arm64 ;;
    *) die "$BIN is not an x86-64 or aarch64 Linux executable: $desc" ;;
esac
case "$WANT_ARCH" in
    "" | "$ARCH") ;;
    x86_64) [ $ARCH = amd64 ] || die "--arch x86_64, but $BIN is $ARCH: $desc" ;;
    aarch64) [ $ARCH = arm64 ] || die "--arch aarch64, but $BIN is $ARCH: $desc" ;;
    amd64 | arm64) die "--arch $WANT_ARCH, but $BIN is $ARCH: $desc" ;;
    *) die "unknown --arch '$WANT_ARCH' (amd64 or arm64)" ;;
esac
# How to run the architecture's programs here.
RUN=()
if [ "$ARCH" != "$(dpkg --print-architecture)" ]; then
    [ $ARCH = arm64 ] || die "cannot run $ARCH programs on this $(dpkg --print-architecture) host"
    command -v qemu-aarch64-static >/dev/null ||
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user-static >/dev/null ||
        die "qemu-aarch64-static is needed to list an arm64 busybox's applets (apt-get install qemu-user-static)"
    RUN=(qemu-aarch64-static)
fi

WORK=$(mktemp -d /tmp/agent-rootfs-debs.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
debs=$("$HERE/fetch-debs.sh" "$ARCH" "${SEMAPHORE_ROOTFS_DEBS:-$WORK/debs}" "${DEBS[@]}") ||
    die "cannot download Debian's $ARCH ${DEBS[*]}"
for deb in $debs; do
    dpkg-deb -x "$deb" "$WORK/x"
done
X=$WORK/x

mkdir -p "$DEST"/{bin,sbin,usr/bin,usr/sbin,etc/ssl/certs,root,tmp,dev,proc,sys,home/semaphore}
chmod 1777 "$DEST/tmp"
chmod 0700 "$DEST/root"
install -m 0755 "$BIN" "$DEST/bin/semaphore-agent"
# Where Semaphore's image has it (the Kubernetes controller and the Helm
# chart start /opt/semaphore/agent), and as `agent` on PATH.
mkdir -p "$DEST/opt/semaphore"
ln -s /bin/semaphore-agent "$DEST/opt/semaphore/agent"
ln -s semaphore-agent "$DEST/bin/agent"
install -m 0755 "$X/bin/bash-static" "$DEST/bin/bash"
install -m 0755 "$X/bin/busybox" "$DEST/bin/busybox"

# One symlink per busybox applet at the path busybox itself reports
# (bin/sh, usr/bin/env, ...), except where bash is already installed.
"${RUN[@]}" "$X/bin/busybox" --list-full | while read -r applet; do
    [ -e "$DEST/$applet" ] || [ -L "$DEST/$applet" ] || ln -s /bin/busybox "$DEST/$applet"
done

# The CA bundle: what update-ca-certificates would build from the package
# (dpkg-deb -x runs no maintainer scripts), at the path rustls-native-certs
# and most tools look first.
cat "$X"/usr/share/ca-certificates/mozilla/*.crt >"$DEST/etc/ssl/certs/ca-certificates.crt"
chmod 0644 "$DEST/etc/ssl/certs/ca-certificates.crt"

cat >"$DEST/etc/passwd" <<EOF
root:x:0:0:root:/root:/bin/bash
semaphore:x:$AGENT_UID:$AGENT_UID:Semaphore agent:/home/semaphore:/bin/bash
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
cat >"$DEST/etc/group" <<EOF
root:x:0:
semaphore:x:$AGENT_UID:
nogroup:x:65534:
EOF
cat >"$DEST/etc/hosts" <<EOF
127.0.0.1 localhost
::1 localhost
EOF
printf 'PATH=/bin:/sbin:/usr/bin:/usr/sbin\nexport PATH\n' >"$DEST/etc/profile"
chown "$AGENT_UID:$AGENT_UID" "$DEST/home/semaphore"

echo "assemble-rootfs: $DEST ($ARCH): $(du -sh "$DEST" | cut -f1), $(find "$DEST" -type f | wc -l) files," \
    "$(find "$DEST" -type l | wc -l) applet links, $(grep -c 'BEGIN CERTIFICATE' "$DEST/etc/ssl/certs/ca-certificates.crt") CA certificates"
