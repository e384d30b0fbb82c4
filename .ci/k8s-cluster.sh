#!/usr/bin/env bash
# A real single-node Kubernetes on 127.0.0.1 for tests/integration/kubernetes_cluster.rs.
#
#   k8s-cluster.sh build   build/fetch every part into $K8S_HOME (cached: a
#                          second run on the same machine rebuilds nothing)
#   k8s-cluster.sh build-kube
#                          only the Kubernetes binaries of $K8S_VERSION
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
#   k8s-cluster.sh agent-image NAME BINARY
#                          import an image with BINARY at /opt/semaphore/agent
#
# K8S_VERSION picks the Kubernetes version (default v1.34.4, the oldest the
# project supports; CI also runs the newest whose kubelet still runs on
# cgroup v1, $K8S_NEWEST: .ci/k8s-newest.sh). `oldest` and `newest` name
# those two. Each version's binaries are built once into
# $K8S_HOME/kube/VERSION/bin; the Go build and module caches are shared.
# One cluster at a time per machine (the run dir, ports and node paths are
# shared): `up` of one version after `up` of another takes the first down.
#
# Kubernetes comes from the Go module proxy (k8s.io/kubernetes, built from a
# wrapper module that points each staging module at its published version),
# the rest from Debian packages unpacked into a private root (no services).
set -euo pipefail

K8S_OLDEST=v1.34.4
K8S_NEWEST=v1.37.2
K8S_VERSION=${K8S_VERSION:-$K8S_OLDEST}
case "$K8S_VERSION" in
    oldest) K8S_VERSION=$K8S_OLDEST ;;
    newest) K8S_VERSION=$K8S_NEWEST ;;
esac
case "$K8S_VERSION" in
    v1.[0-9][0-9].[0-9]*) ;;
    *) echo "k8s-cluster: error: K8S_VERSION must look like v1.34.4 (or be oldest or newest), not '$K8S_VERSION'" >&2; exit 2 ;;
esac
K8S_MINOR=${K8S_VERSION#v1.}
K8S_MINOR=${K8S_MINOR%%.*}
K8S_HOME=${K8S_HOME:-/var/tmp/semaphore-ci-k8s}
KUBE=$K8S_HOME/kube/$K8S_VERSION
BIN=$KUBE/bin
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
    # Earlier versions of this script kept the one version it built in
    # $K8S_HOME/bin: reuse those binaries when they are this version.
    if [ -d "$K8S_HOME/bin" ]; then
        mkdir -p "$BIN"
        local c
        for c in $KUBE_CMDS; do
            [ -x "$K8S_HOME/bin/$c" ] && cp -l "$K8S_HOME/bin/$c" "$BIN/$c" 2>/dev/null
        done
        if kube_binaries_ok; then
            log "kubernetes $K8S_VERSION binaries taken from $K8S_HOME/bin"
            return 0
        fi
    fi
    # The machine's Go, also when /usr/local/go/bin is not on PATH.
    command -v go >/dev/null || PATH=$PATH:/usr/local/go/bin
    command -v go >/dev/null || die "go is needed to build Kubernetes (it is on the CI machine)"
    export GOCACHE=$K8S_HOME/go/cache GOMODCACHE=$K8S_HOME/go/mod GOPATH=$K8S_HOME/go/path
    export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0
    local src=$KUBE/src
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
            -ldflags "-s -w -X $vpkg.gitVersion=$K8S_VERSION -X $vpkg.gitMajor=1 -X $vpkg.gitMinor=$K8S_MINOR -X $vpkg.gitTreeState=clean" \
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
    local rootfs=$1 name=$2 out=$3 cmd=${4:-} user=${5:-}
    local env=${6:-'["PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"]'} workdir=${7:-}
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
    [ -n "$user" ] && cmdjson="$cmdjson,\"User\":\"$user\""
    [ -n "$workdir" ] && cmdjson="$cmdjson,\"WorkingDir\":\"$workdir\""
    printf '{"architecture":"amd64","os":"linux","config":{"Env":%s%s},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
        "$env" "$cmdjson" "$ldig" > "$w/config.json"
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

# ------------------------------------------------------------------- up ---

# Paths the node writes outside $RUN (hard-wired in the kubelet, containerd
# and CNI); `down` removes those that did not exist before `up`.
NODE_PATHS="/var/lib/kubelet /var/log/containers /var/log/pods /var/lib/cni /run/netns /run/containerd/s /run/containerd/runc/k8s.io /run/containerd/runc /run/containerd"
ADMIN_TOKEN_FILE=$RUN/pki/admin.token

pki() {
    local p=$RUN/pki
    mkdir -p "$p"
    (
        cd "$p"
        openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2 \
            -subj "/CN=semaphore-ci-k8s-ca" 2>/dev/null
        # cert NAME SUBJECT [SANS]: a key and a certificate signed by the CA.
        cert() {
            openssl req -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.csr" -subj "$2" 2>/dev/null
            if [ -n "${3:-}" ]; then
                printf 'subjectAltName=%s\n' "$3" > "$1.ext"
            else
                : > "$1.ext"
            fi
            openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial \
                -out "$1.crt" -days 2 -extfile "$1.ext" 2>/dev/null
        }
        cert apiserver "/CN=kube-apiserver" \
            "IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
        cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client"
        cert kubelet "/O=system:nodes/CN=system:node:$NODE_NAME"
        cert kubelet-serving "/CN=$NODE_NAME" "IP:127.0.0.1,DNS:$NODE_NAME,DNS:localhost"
        openssl genrsa -out sa.key 2048 2>/dev/null
        openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
        head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > admin.token
        printf '%s,admin,admin,system:masters\n' "$(cat admin.token)" > tokens.csv
        chmod 600 ./*.key admin.token tokens.csv
    )
}

# kubeconfig FILE [token|cert NAME]
kubeconfig() {
    local file=$1 how=$2 name=${3:-}
    {
        echo "apiVersion: v1"
        echo "kind: Config"
        echo "clusters: [{name: local, cluster: {server: 'https://127.0.0.1:6443', certificate-authority: '$RUN/pki/ca.crt'}}]"
        echo "contexts: [{name: local, context: {cluster: local, user: u, namespace: default}}]"
        echo "current-context: local"
        if [ "$how" = token ]; then
            echo "users: [{name: u, user: {token: '$(cat "$ADMIN_TOKEN_FILE")'}}]"
        else
            echo "users: [{name: u, user: {client-certificate: '$RUN/pki/$name.crt', client-key: '$RUN/pki/$name.key'}}]"
        fi
    } > "$file"
    chmod 600 "$file"
}

# start NAME COMMAND...: runs it in the background, its output in
# $RUN/log/NAME.log, its PID in $RUN/pids/NAME.
start() {
    local name=$1
    shift
    setsid "$@" > "$RUN/log/$name.log" 2>&1 < /dev/null &
    echo $! > "$RUN/pids/$name"
}

# wait_for WHAT SECONDS COMMAND...: bounded wait for COMMAND to succeed.
wait_for() {
    local what=$1 secs=$2
    shift 2
    local i
    for ((i = 0; i < secs * 2; i++)); do
        if "$@" >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.5
    done
    log "$what not ready within ${secs}s; the logs:"
    tail -n 30 "$RUN"/log/*.log >&2 || true
    return 1
}

kctl() { "$BIN/kubectl" --kubeconfig "$RUN/admin.kubeconfig" "$@"; }

node_ready() {
    [ "$(kctl get node "$NODE_NAME" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}')" = True ]
}

import_image() {
    "$ROOT/usr/bin/ctr" -a "$RUN/containerd.sock" -n k8s.io images import "$1" >/dev/null
}

cmd_up() {
    [ "$(id -u)" = 0 ] || die "the node needs root"
    cmd_build
    if [ -d "$RUN" ]; then
        log "a previous cluster is still there: taking it down first"
        cmd_down
    fi
    mkdir -p "$RUN/log" "$RUN/pids" "$RUN/etcd" "$RUN/kubelet" "$RUN/cni/net.d" "$RUN/containerd"
    local p
    for p in $NODE_PATHS; do
        [ -e "$p" ] && echo "$p" >> "$RUN/preexisting"
    done
    for p in /run/containerd/s/* /run/netns/*; do
        [ -e "$p" ] && echo "$p" >> "$RUN/preexisting"
    done
    touch "$RUN/preexisting"
    echo "$NODE_NAME" > "$RUN/node-name"
    pki
    kubeconfig "$RUN/admin.kubeconfig" token
    kubeconfig "$RUN/kubelet.kubeconfig" cert kubelet
    local t0=$SECONDS

    start etcd "$ROOT/usr/bin/etcd" --data-dir "$RUN/etcd" --unsafe-no-fsync \
        --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
        --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
        --initial-cluster default=http://127.0.0.1:2380 --name default
    start kube-apiserver "$BIN/kube-apiserver" \
        --etcd-servers http://127.0.0.1:2379 \
        --secure-port 6443 --bind-address 127.0.0.1 --advertise-address 127.0.0.1 \
        --endpoint-reconciler-type=none \
        --tls-cert-file "$RUN/pki/apiserver.crt" --tls-private-key-file "$RUN/pki/apiserver.key" \
        --client-ca-file "$RUN/pki/ca.crt" --token-auth-file "$RUN/pki/tokens.csv" \
        --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
        --service-account-issuer https://kubernetes.default.svc \
        --service-account-key-file "$RUN/pki/sa.pub" \
        --service-account-signing-key-file "$RUN/pki/sa.key" \
        --api-audiences https://kubernetes.default.svc \
        --service-cluster-ip-range 10.96.0.0/16 \
        --kubelet-client-certificate "$RUN/pki/apiserver-kubelet-client.crt" \
        --kubelet-client-key "$RUN/pki/apiserver-kubelet-client.key" \
        --kubelet-preferred-address-types=Hostname \
        --allow-privileged=true --profiling=false
    wait_for "etcd" 30 curl -sf http://127.0.0.1:2379/health
    wait_for "kube-apiserver" 120 curl -sf --cacert "$RUN/pki/ca.crt" \
        -H "Authorization: Bearer $(cat "$ADMIN_TOKEN_FILE")" https://127.0.0.1:6443/readyz
    # No node IPAM (the bridge's host-local IPAM gives the addresses), no
    # cloud; 1.37 dropped the cloud-node-lifecycle controller and refuses
    # its name, so it is turned off only where the binary has it.
    local controllers='*,-node-ipam-controller'
    if "$BIN/kube-controller-manager" --help 2>/dev/null | grep -q 'cloud-node-lifecycle-controller'; then
        controllers="$controllers,-cloud-node-lifecycle-controller"
    fi
    start kube-controller-manager "$BIN/kube-controller-manager" \
        --kubeconfig "$RUN/admin.kubeconfig" --bind-address 127.0.0.1 \
        --use-service-account-credentials \
        --controllers="$controllers" --leader-elect=false \
        --root-ca-file "$RUN/pki/ca.crt" \
        --service-account-private-key-file "$RUN/pki/sa.key" \
        --cluster-signing-cert-file "$RUN/pki/ca.crt" --cluster-signing-key-file "$RUN/pki/ca.key"
    start kube-scheduler "$BIN/kube-scheduler" \
        --kubeconfig "$RUN/admin.kubeconfig" --bind-address 127.0.0.1 --leader-elect=false

    cat > "$RUN/cni/net.d/10-semci.conflist" <<EOF
{"cniVersion": "0.4.0", "name": "semci", "plugins": [
  {"type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "$POD_CIDR"}]], "dataDir": "$RUN/cni/ipam"}}
]}
EOF
    cat > "$RUN/containerd.toml" <<EOF
version = 2
root = "$RUN/containerd/root"
state = "$RUN/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "$RUN/containerd.sock"
[ttrpc]
  address = "$RUN/containerd.ttrpc.sock"
[debug]
  address = "$RUN/containerd.debug.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "$RUN/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "docker.io/local/pause:1"
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "$ROOT/usr/sbin/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$ROOT/usr/lib/cni"
    conf_dir = "$RUN/cni/net.d"
EOF
    start containerd env PATH="$ROOT/usr/bin:$ROOT/usr/sbin:$PATH" \
        "$ROOT/usr/bin/containerd" --config "$RUN/containerd.toml"
    wait_for "containerd" 30 "$ROOT/usr/bin/ctr" -a "$RUN/containerd.sock" version
    local image
    for image in "$IMAGES"/*.tar; do
        import_image "$image"
    done

    cat > "$RUN/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 127.0.0.1
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
containerRuntimeEndpoint: unix://$RUN/containerd.sock
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
tlsCertFile: $RUN/pki/kubelet-serving.crt
tlsPrivateKeyFile: $RUN/pki/kubelet-serving.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $RUN/pki/ca.crt}
authorization: {mode: Webhook}
evictionHard: {nodefs.available: "1%", imagefs.available: "1%", memory.available: "50Mi"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
podLogsDir: $RUN/pod-logs
podCIDR: $POD_CIDR
resolvConf: /etc/resolv.conf
serializeImagePulls: false
EOF
    start kubelet "$BIN/kubelet" --config "$RUN/kubelet.yaml" \
        --kubeconfig "$RUN/kubelet.kubeconfig" --root-dir "$RUN/kubelet" \
        --hostname-override "$NODE_NAME"
    wait_for "the node" 120 node_ready
    wait_for "the default ServiceAccount" 60 kctl get serviceaccount default -n default
    wait_for "kube-root-ca.crt" 60 kctl get configmap kube-root-ca.crt -n default
    {
        echo "K8S_HOME=$K8S_HOME"
        echo "KUBECONFIG=$RUN/admin.kubeconfig"
        echo "KUBECTL=$BIN/kubectl"
        echo "K8S_CA=$RUN/pki/ca.crt"
        echo "K8S_NODE=$NODE_NAME"
        echo "K8S_VERSION=$K8S_VERSION"
    } > "$RUN/env"
    log "cluster $K8S_VERSION up in $((SECONDS - t0))s (node $NODE_NAME; env in $RUN/env)"
}

# ----------------------------------------------------------------- down ---

# stop NAME: TERM, a bounded wait, then KILL, of the PID `start` recorded.
stop() {
    local f=$RUN/pids/$1 pid i
    [ -f "$f" ] || return 0
    pid=$(cat "$f")
    if kill -TERM "$pid" 2>/dev/null; then
        for ((i = 0; i < 40; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.25
        done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$f"
}

# The PIDs in every cgroup the node made (its pods' processes).
node_cgroup_pids() {
    local d
    for d in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/*/k8s.io /sys/fs/cgroup/kubepods /sys/fs/cgroup/k8s.io; do
        if [ -d "$d" ]; then
            find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null || true
        fi
    done | sort -u
}

# The PIDs of our containerd's shims (they leave containerd's process tree).
shim_pids() {
    local exe p
    for p in /proc/[0-9]*; do
        exe=$(readlink "$p/exe" 2>/dev/null) || continue
        case "$exe" in "$ROOT"/usr/bin/containerd-shim*) echo "${p#/proc/}" ;; esac
    done
}

preexisted() { grep -qxF "$1" "$RUN/preexisting" 2>/dev/null; }

cmd_down() {
    local i pids
    # No run dir, no node of ours: in particular, the cgroups below would
    # then be another kubelet's.
    if [ ! -d "$RUN" ]; then
        log "down: no cluster in $RUN"
        return 0
    fi
    stop kubelet
    stop kube-scheduler
    stop kube-controller-manager
    # The pods' processes, then the shims, then containerd.
    for ((i = 0; i < 20; i++)); do
        pids=$(node_cgroup_pids)
        [ -z "$pids" ] && break
        # shellcheck disable=SC2086
        kill -KILL $pids 2>/dev/null || true
        sleep 0.25
    done
    stop containerd
    pids=$(shim_pids)
    # shellcheck disable=SC2086
    [ -n "$pids" ] && { kill -KILL $pids 2>/dev/null || true; }
    stop kube-apiserver
    stop etcd
    # Mounts under the run dir (rootfs, shm, volumes) and the pods'
    # network namespaces, deepest first.
    local m
    for ((i = 0; i < 5; i++)); do
        m=$(awk -v run="$RUN" '$5 == run || index($5, run "/") == 1 {print $5}' /proc/self/mountinfo | sort -r)
        [ -z "$m" ] && break
        echo "$m" | while read -r p; do umount -l "$p" 2>/dev/null || true; done
    done
    for p in /run/netns/cni-*; do
        [ -e "$p" ] || continue
        preexisted "$p" && continue
        umount -l "$p" 2>/dev/null || true
        rm -f "$p"
    done
    for p in /run/containerd/s/*; do
        [ -e "$p" ] || continue
        preexisted "$p" || rm -f "$p"
    done
    ip link del "$BRIDGE" 2>/dev/null || true
    local d
    for d in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/*/k8s.io /sys/fs/cgroup/kubepods /sys/fs/cgroup/k8s.io; do
        if [ -d "$d" ]; then
            find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
        fi
    done
    for p in $NODE_PATHS; do
        [ -e "$p" ] || continue
        preexisted "$p" && continue
        # A directory another program filled meanwhile stays.
        case "$p" in
            /run/netns | /run/containerd/s | /run/containerd/runc) rmdir "$p" 2>/dev/null || true ;;
            # Made by this node's containerd (its shims' and runc's state),
            # whose processes are gone by now.
            /run/containerd) rm -rf "$p" ;;
            *) rm -rf "$p" ;;
        esac
    done
    rm -rf "$RUN"
    log "down: nothing of the node left"
}

cmd_import() {
    local name=${1:?image name} rootfs=${2:?rootfs dir}
    [ -S "$RUN/containerd.sock" ] || die "the cluster is not up"
    local out
    out=$(mktemp "$K8S_HOME/import.XXXXXX.tar")
    oci_archive "$rootfs" "$name" "$out"
    import_image "$out"
    rm -f "$out"
}

# agent-image NAME BINARY: the scratch image (packaging/Dockerfile.scratch)
# with BINARY as its agent: the tree packaging/assemble-rootfs.sh makes
# (static bash, busybox, the CA bundle, /opt/semaphore/agent; no kubectl),
# plus the shared libraries BINARY links (a debug build), and the image
# config of Dockerfile.scratch (user 1000, HOME, PATH, the default CMD).
cmd_agent_image() {
    local name=${1:?image name} binary=${2:?agent binary}
    [ -S "$RUN/containerd.sock" ] || die "the cluster is not up"
    local here r
    here=$(cd "$(dirname "$0")/.." && pwd)
    r=$(mktemp -d "$K8S_HOME/agent-rootfs.XXXXXX")
    rmdir "$r"
    bash "$here/packaging/assemble-rootfs.sh" "$r" "$binary" >/dev/null
    local lib
    for lib in $(ldd "$binary" 2>/dev/null | grep -o '/[^ ]*' | sort -u); do
        mkdir -p "$r$(dirname "$lib")"
        cp -L "$lib" "$r$lib"
    done
    local out
    out=$(mktemp "$K8S_HOME/import.XXXXXX.tar")
    oci_archive "$r" "$name" "$out" '["/opt/semaphore/agent","start","--config-file","/opt/semaphore/semaphore-agent.yml"]' \
        1000:1000 '["PATH=/bin:/usr/bin:/sbin:/usr/sbin","HOME=/home/semaphore"]' /home/semaphore
    import_image "$out"
    rm -rf "$r" "$out"
}

NODE_NAME=$(cat "$RUN/node-name" 2>/dev/null || hostname | tr "[:upper:]" "[:lower:]")

case "${1:-}" in
    build) cmd_build ;;
    build-kube) mkdir -p "$K8S_HOME"; build_kubernetes ;;
    up) cmd_up ;;
    down) cmd_down ;;
    import) shift; cmd_import "$@" ;;
    agent-image) shift; cmd_agent_image "$@" ;;
    *) echo "usage: $0 build|build-kube|up|down|import NAME ROOTFS|agent-image NAME BINARY" >&2; exit 2 ;;
esac
