#!/usr/bin/env bash
# Assemble the root filesystem of the minimal ("scratch") agent image:
# the static agent, Debian's static bash, busybox's static applets and the
# Mozilla CA bundle, plus the few files a login shell expects. Used both by
# packaging/Dockerfile.scratch (inside its builder stage) and by
# packaging/rootfs-smoke.sh, so the image and the smoke test share one
# recipe.
#
# Usage: packaging/assemble-rootfs.sh DEST AGENT_BINARY
#   DEST must not exist or be empty. Needs apt-get (downloads the three
#   .deb files; installs nothing) and dpkg-deb.
set -euo pipefail

DEST=${1:?usage: assemble-rootfs.sh DEST AGENT_BINARY}
BIN=${2:?usage: assemble-rootfs.sh DEST AGENT_BINARY}
DEBS=(bash-static busybox-static ca-certificates)
AGENT_UID=1000

[ -f "$BIN" ] || { echo "assemble-rootfs: no agent binary at $BIN" >&2; exit 1; }
if [ -e "$DEST" ] && [ -n "$(ls -A "$DEST")" ]; then
    echo "assemble-rootfs: $DEST is not empty" >&2
    exit 1
fi

WORK=$(mktemp -d /tmp/agent-rootfs-debs.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
# apt's download sandbox user must be able to write here.
chmod 0777 "$WORK"
if ! (cd "$WORK" && apt-get download -qq "${DEBS[@]}" >/dev/null 2>&1); then
    apt-get update -qq
    (cd "$WORK" && apt-get download -qq "${DEBS[@]}")
fi
for deb in "$WORK"/*.deb; do
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
"$X/bin/busybox" --list-full | while read -r applet; do
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

echo "assemble-rootfs: $DEST: $(du -sh "$DEST" | cut -f1), $(find "$DEST" -type f | wc -l) files," \
    "$(find "$DEST" -type l | wc -l) applet links, $(grep -c 'BEGIN CERTIFICATE' "$DEST/etc/ssl/certs/ca-certificates.crt") CA certificates"
