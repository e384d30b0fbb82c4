#!/usr/bin/env bash
# A real single-node Kubernetes on 127.0.0.1 for tests/integration/kubernetes_cluster.rs.
#
#   k8s-cluster.sh build   build/fetch every part into $K8S_HOME (cached: a
#                          second run on the same machine rebuilds nothing)
#   k8s-cluster.sh up      build, then start etcd, kube-apiserver, the
#                          controller-manager, the scheduler, containerd and a
#                          kubelet; import the local images; wait for Ready;
#                          write $K8S_HOME/run/env (KUBECONFIG, ...)
#   k8s-cluster.sh down    stop every process by its PID and remove what the
#                          node made (mounts, bridge, cgroups, /var and /run
#                          paths); idempotent
#   k8s-cluster.sh import NAME ROOTFS
#                          import ROOTFS as the image NAME (fully qualified,
#                          e.g. docker.io/local/agent:1) into the running node
#
# Kubernetes comes from the Go module proxy (k8s.io/kubernetes, built from a
# wrapper module that points each staging module at its published version),
# the rest from Debian packages unpacked into a private root (no services).
set -euo pipefail

K8S_VERSION=v1.34.4
K8S_HOME=${K8S_HOME:-/var/tmp/semaphore-ci-k8s}
BIN=$K8S_HOME/bin
ROOT=$K8S_HOME/root
RUN=$K8S_HOME/run
IMAGES=$K8S_HOME/images
DEBS="etcd-server containerd runc containernetworking-plugins bash-static busybox-static"
KUBE_CMDS="kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl"
BRIDGE=semci0
POD_CIDR=10.244.0.0/24

log() { echo "k8s-cluster: $*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------- build ---

kube_binaries_ok() {
    local c
    for c in $KUBE_CMDS; do
        [ -x "$BIN/$c" ] || return 1
    done
    "$BIN/kubelet" --version 2>/dev/null | grep -qx "Kubernetes $K8S_VERSION" || return 1
    "$BIN/kube-apiserver" --version 2>/dev/null | grep -qx "Kubernetes $K8S_VERSION" || return 1
}

build_kubernetes() {
    if kube_binaries_ok; then
        log "kubernetes $K8S_VERSION binaries cached in $BIN"
        return 0
    fi
    command -v go >/dev/null || die "go is needed to build Kubernetes (it is on the CI machine)"
    export GOCACHE=$K8S_HOME/go/cache GOMODCACHE=$K8S_HOME/go/mod GOPATH=$K8S_HOME/go/path
    export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0
    local src=$K8S_HOME/src
    mkdir -p "$src" "$BIN" "$GOCACHE" "$GOMODCACHE"
    # The module zip has no staging/ tree, so each `k8s.io/x => ./staging/...`
    # replace of k8s.io/kubernetes' own go.mod becomes `k8s.io/x => k8s.io/x
    # v0.MINOR.PATCH` here (the staging modules are published in lock step).
    local gomod
    gomod=$(cd "$src" && go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/^\t"GoMod": "\(.*\)",$/\1/p')
    [ -f "$gomod" ] || die "could not read k8s.io/kubernetes@$K8S_VERSION's go.mod from the module proxy"
    local staging_version=v0.${K8S_VERSION#v1.}
    {
        echo "module semaphore-ci/k8s"
        echo
        echo "go 1.24.0"
        echo
        echo "require k8s.io/kubernetes $K8S_VERSION"
        echo
        echo "tool ("
        for c in $KUBE_CMDS; do echo "	k8s.io/kubernetes/cmd/$c"; done
        echo ")"
        echo
        echo "replace ("
        sed -n 's#^\t\(k8s.io/[a-z0-9-]*\) => ./staging/src/k8s.io/.*#\t\1 => \1 '"$staging_version"'#p' "$gomod"
        echo ")"
    } > "$src/go.mod.new"
    local n
    n=$(grep -c ' => ' "$src/go.mod.new")
    [ "$n" -ge 30 ] || die "expected ~31 staging replaces in k8s.io/kubernetes' go.mod, found $n"
    if ! cmp -s "$src/go.mod.new" "$src/go.mod.in" 2>/dev/null; then
        cp "$src/go.mod.new" "$src/go.mod"
        cp "$src/go.mod.new" "$src/go.mod.in"
        rm -f "$src/go.sum"
    fi
    log "building kubernetes $K8S_VERSION ($n staging replaces) into $BIN; cold this takes ~7+ min"
    local pkgs=() c
    for c in $KUBE_CMDS; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
    local vpkg=k8s.io/component-base/version
    (
        cd "$src"
        go mod tidy
        nice -n 10 go build -trimpath -o "$BIN/" \
            -ldflags "-s -w -X $vpkg.gitVersion=$K8S_VERSION -X $vpkg.gitMajor=1 -X $vpkg.gitMinor=${K8S_VERSION#v1.} -X $vpkg.gitTreeState=clean" \
            "${pkgs[@]}"
    )
    kube_binaries_ok || die "the built binaries do not report Kubernetes $K8S_VERSION"
}

fetch_debs() {
    local stamp=$ROOT/.debs
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$DEBS" ]; then
        log "debian parts cached in $ROOT"
        return 0
    fi
    local dl=$K8S_HOME/debs
    rm -rf "$dl" "$ROOT"
    mkdir -p "$dl" "$ROOT"
    # shellcheck disable=SC2086
    if ! (cd "$dl" && apt-get download -qq $DEBS >/dev/null 2>&1); then
        apt-get update -qq >/dev/null
        (cd "$dl" && apt-get download -qq $DEBS >/dev/null)
    fi
    local d
    for d in "$dl"/*.deb; do dpkg -x "$d" "$ROOT"; done
    echo "$DEBS" > "$stamp"
}

build_pause() {
    [ -x "$K8S_HOME/pause" ] && return 0
    command -v gcc >/dev/null || die "gcc is needed for the pause binary"
    cat > "$K8S_HOME/pause.c" <<'EOF'
/* The sandbox's PID 1: sleeps until told to stop, reaps what it inherits. */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
static void quit(int sig) { (void)sig; _exit(0); }
static void reap(int sig) { (void)sig; while (waitpid(-1, NULL, WNOHANG) > 0) {} }
int main(void) {
    signal(SIGINT, quit);
    signal(SIGTERM, quit);
    signal(SIGCHLD, reap);
    for (;;) pause();
}
EOF
    gcc -static -O2 -o "$K8S_HOME/pause.tmp" "$K8S_HOME/pause.c"
    mv "$K8S_HOME/pause.tmp" "$K8S_HOME/pause"
}

# oci_archive ROOTFS NAME OUT: a single-layer OCI image archive of ROOTFS.
oci_archive() {
    local rootfs=$1 name=$2 out=$3 cmd=${4:-}
    local w
    w=$(mktemp -d "$K8S_HOME/oci.XXXXXX")
    mkdir -p "$w/blobs/sha256"
    tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$rootfs" -cf "$w/layer.tar" .
    local ldig lsize
    ldig=$(sha256sum "$w/layer.tar" | cut -d' ' -f1)
    lsize=$(stat -c %s "$w/layer.tar")
    mv "$w/layer.tar" "$w/blobs/sha256/$ldig"
    local cmdjson=''
    [ -n "$cmd" ] && cmdjson=",\"Cmd\":$cmd"
    printf '{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"]%s},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
        "$cmdjson" "$ldig" > "$w/config.json"
    local cdig csize
    cdig=$(sha256sum "$w/config.json" | cut -d' ' -f1)
    csize=$(stat -c %s "$w/config.json")
    mv "$w/config.json" "$w/blobs/sha256/$cdig"
    printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}]}' \
        "$cdig" "$csize" "$ldig" "$lsize" > "$w/manifest.json"
    local mdig msize
    mdig=$(sha256sum "$w/manifest.json" | cut -d' ' -f1)
    msize=$(stat -c %s "$w/manifest.json")
    mv "$w/manifest.json" "$w/blobs/sha256/$mdig"
    printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"platform":{"architecture":"amd64","os":"linux"},"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
        "$mdig" "$msize" "$name" "${name##*:}" > "$w/index.json"
    echo '{"imageLayoutVersion":"1.0.0"}' > "$w/oci-layout"
    tar -C "$w" -cf "$out.tmp" oci-layout index.json blobs
    mv "$out.tmp" "$out"
    rm -rf "$w"
}

# base_rootfs DIR: static bash + busybox (sh, coreutils, sleep, ...).
base_rootfs() {
    local d=$1
    rm -rf "$d"
    mkdir -p "$d/bin" "$d/usr/bin" "$d/etc" "$d/tmp" "$d/root" "$d/home/semaphore" "$d/proc" "$d/sys" "$d/dev"
    chmod 1777 "$d/tmp"
    cp "$ROOT/bin/bash-static" "$d/bin/bash"
    cp "$ROOT/bin/busybox" "$d/bin/busybox"
    local applet
    for applet in $("$ROOT/bin/busybox" --list); do
        [ "$applet" = bash ] || [ -e "$d/bin/$applet" ] || ln -s busybox "$d/bin/$applet"
    done
    printf 'root:x:0:0:root:/root:/bin/bash\nsemaphore:x:1000:1000:semaphore:/home/semaphore:/bin/bash\n' > "$d/etc/passwd"
    printf 'root:x:0:\nsemaphore:x:1000:\n' > "$d/etc/group"
    chown 1000:1000 "$d/home/semaphore"
}

build_images() {
    mkdir -p "$IMAGES"
    local stamp=$IMAGES/.stamp want
    want="2 $(sha256sum "$K8S_HOME/pause" | cut -d' ' -f1) $(cat "$ROOT/.debs")"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
        return 0
    fi
    local r=$K8S_HOME/rootfs
    rm -rf "$r"
    mkdir -p "$r/pause"
    cp "$K8S_HOME/pause" "$r/pause/pause"
    oci_archive "$r/pause" docker.io/local/pause:1 "$IMAGES/pause.tar" '["/pause"]'
    base_rootfs "$r/job"
    oci_archive "$r/job" docker.io/local/job:1 "$IMAGES/job.tar" '["/bin/bash"]'
    rm -rf "$r"
    echo "$want" > "$stamp"
}

cmd_build() {
    mkdir -p "$K8S_HOME"
    fetch_debs
    build_pause
    build_images
    build_kubernetes
    log "build done"
}

@@UPDOWN@@