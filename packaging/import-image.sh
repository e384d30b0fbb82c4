#!/usr/bin/env bash
# packaging/Dockerfile's image for a platform this host cannot run programs
# of (linux/arm64 on x86_64, with no binfmt_misc): the Dockerfile's RUN
# step done from the host on the unpacked base, then loaded as a one-layer
# image for PLATFORM with the Dockerfile's USER, WORKDIR and CMD. Nothing of the
# image's own architecture runs. The result has the layout `docker build -f
# packaging/Dockerfile` gives (test-images.sh compares the two):
#   - the agent at /opt/semaphore/agent (0755), also /usr/local/bin/agent
#     and /usr/local/bin/semaphore-agent (links), /opt/semaphore owned by
#     1000:1000;
#   - user and group semaphore (1000), home /home/semaphore from the base's
#     /etc/skel, shell /bin/bash: the host's groupadd/useradd with
#     --prefix, which edit the base's own passwd, group, shadow, gshadow;
#   - the Dockerfile's packages (bash, ca-certificates, curl, procps) must
#     be in the base already (packaging/foreign-rootfs.sh has them): there
#     is no apt-get here, and a missing one is named.
#
# Usage: packaging/import-image.sh PLATFORM BIN BASE_TAR TAG
#   PLATFORM  linux/arm64 (the only one so far)
#   BIN       the static agent for it (build-static.sh --arch arm64)
#   BASE_TAR  a Debian rootfs of that architecture (foreign-rootfs.sh arm64)
#   TAG       the image's name
# Needs root (file owners) and a Docker engine (DOCKER_HOST).
set -euo pipefail

usage="usage: $0 PLATFORM BIN BASE_TAR TAG"
PLATFORM=${1:?$usage}
BIN=${2:?$usage}
BASE_TAR=${3:?$usage}
TAG=${4:?$usage}
HERE=$(cd "$(dirname "$0")" && pwd)
DF=$HERE/Dockerfile
log() { echo "import-image: $*" >&2; }
die() { log "$*"; exit 1; }

case $PLATFORM in
linux/arm64) want_file="ARM aarch64" ;;
*) die "platform '$PLATFORM' is not supported (linux/arm64 is)" ;;
esac
[ -f "$BIN" ] || die "no agent binary at '$BIN'"
[[ $(file -b "$BIN") == *"$want_file"*"statically linked"* ]] ||
    die "$BIN is not a static $want_file binary for $PLATFORM: $(file -b "$BIN")"
[ -f "$BASE_TAR" ] || die "no base rootfs tarball at '$BASE_TAR'"
[ "$(id -u)" = 0 ] || die "needs root (the tree's files belong to root and to uid 1000)"

WORK=$(mktemp -d /var/tmp/agent-import-image.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
R=$WORK/root
mkdir "$R"
tar -C "$R" -xf "$BASE_TAR"

# --- the Dockerfile's RUN step, from the host ------------------------------------
pkgs=$(sed -n 's/^ *for p in \(.*\); do.*/\1/p' "$DF" | head -1)
[ -n "$pkgs" ] || die "cannot read the package list of $DF's RUN step"
missing=""
for p in $pkgs; do
    awk -v p="$p" '
        /^Package: / { name = $2 }
        /^Status: / && name == p && $0 == "Status: install ok installed" { found = 1 }
        END { exit !found }' "$R/var/lib/dpkg/status" || missing+=" $p"
done
[ -z "$missing" ] || die "the base lacks$missing (the Dockerfile would apt-get them; there is no apt-get here)"
groupadd --prefix "$R" --gid 1000 semaphore
useradd --prefix "$R" --uid 1000 --gid 1000 --create-home --skel "$R/etc/skel" --shell /bin/bash semaphore
mkdir -p "$R/opt/semaphore" "$R/usr/local/bin"
install -m 0755 "$BIN" "$R/opt/semaphore/agent"
chown 1000:1000 "$R/opt/semaphore"
ln -s /opt/semaphore/agent "$R/usr/local/bin/agent"
ln -s /opt/semaphore/agent "$R/usr/local/bin/semaphore-agent"
rm -f "$R/etc/.pwd.lock" "$R/etc/passwd-" "$R/etc/group-" "$R/etc/shadow-" "$R/etc/gshadow-"

# --- the image: one layer, the Dockerfile's USER, WORKDIR and CMD ----------------------
# `docker load` of an archive written here: `docker import --platform` is
# ignored by engines without the containerd image store (Debian's 20.10
# among them), which would label the image with the host's architecture.
cfg() { # KEY: the value of the Dockerfile's last KEY line
    local line
    line=$(grep "^$1 " "$DF" | tail -1)
    [ -n "$line" ] || die "no $1 line in $DF"
    echo "${line#"$1 "}"
}
mkdir "$WORK/archive"
tar -C "$R" --numeric-owner --sort=name -cf "$WORK/archive/layer.tar" .
python3 - "$WORK/archive" "$PLATFORM" "$TAG" "$(cfg USER)" "$(cfg WORKDIR)" "$(cfg CMD)" <<'PY'
import hashlib, json, os, sys
d, platform, tag, user, workdir, cmd = sys.argv[1:]
os_, arch = platform.split("/")
def sha(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()
layer = sha(os.path.join(d, "layer.tar"))
os.makedirs(os.path.join(d, layer))
os.rename(os.path.join(d, "layer.tar"), os.path.join(d, layer, "layer.tar"))
config = {
    "architecture": arch, "os": os_,
    "config": {"User": user, "WorkingDir": workdir, "Cmd": json.loads(cmd),
               "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},
    "rootfs": {"type": "layers", "diff_ids": ["sha256:" + layer]},
    "history": [{"created_by": "packaging/import-image.sh " + platform}],
}
blob = json.dumps(config, sort_keys=True).encode()
name = hashlib.sha256(blob).hexdigest() + ".json"
open(os.path.join(d, name), "wb").write(blob)
json.dump([{"Config": name, "RepoTags": [tag], "Layers": [layer + "/layer.tar"]}],
          open(os.path.join(d, "manifest.json"), "w"))
PY
tar -C "$WORK/archive" -cf - . | docker load -q >/dev/null
got=$(docker image inspect -f '{{.Os}}/{{.Architecture}}' "$TAG")
[ "$got" = "$PLATFORM" ] || die "the loaded image $TAG is $got, not $PLATFORM"
log "loaded $TAG ($got): $(docker image inspect -f '{{json .Config.Cmd}} user {{.Config.User}}' "$TAG")"
echo "$TAG"
