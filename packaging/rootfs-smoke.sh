#!/usr/bin/env bash
# Smoke-test the minimal ("scratch") container image without a Docker engine.
#
# 1. Assemble its root filesystem with packaging/assemble-rootfs.sh, the same
#    recipe Dockerfile.scratch runs, and check it holds nothing else.
# 2. Build a real OCI image from it with umoci and run it with runc (both
#    from Debian), host network like `docker run --network host`.
# 3. Independently, enter the same rootfs with unshare (mount, pid, uts, ipc
#    namespaces) + chroot, /dev bound and /proc mounted, empty environment.
# In each runtime, as the image's user (uid 1000): `version`, the busybox
# applets and CA bundle, `run` of a real job (examples/hello.yaml), and
# `start --disconnect-after-job` against the dev control plane (cargo example
# dev-hub) on 127.0.0.1 for one job: the agent must register, run the job to
# `passed`, disconnect and exit 0.
#
# Usage: packaging/rootfs-smoke.sh AGENT_BINARY
#   Needs root. Set KEEP_OCI=DIR to keep the OCI image layout.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$(realpath "${1:?usage: rootfs-smoke.sh AGENT_BINARY}")
JOB=$ROOT/examples/hello.yaml
AGENT_UID=1000
IMAGE_ENV=(HOME=/home/semaphore PATH=/bin:/usr/bin:/sbin:/usr/sbin)
WORK=$(mktemp -d /tmp/agent-rootfs-smoke.XXXXXX)
RFS=$WORK/rootfs
HUB_PID=""
failed=0
pass() { echo "PASS rootfs: $*"; }
fail() { echo "FAIL rootfs: $*"; failed=1; }
skip() { echo "SKIP rootfs: $*"; }
indent() { tail -n "${1:-20}" | sed 's/^/  | /'; }

cleanup() {
    set +e
    [ -z "$HUB_PID" ] || { kill "$HUB_PID" 2>/dev/null; wait "$HUB_PID" 2>/dev/null; }
    for c in $(runc list -q 2>/dev/null | grep '^agent-smoke-'); do runc delete -f "$c" >/dev/null 2>&1; done
    # Never delete a tree that still has something mounted in it.
    if ! grep -q " $WORK/" /proc/mounts; then rm -rf "$WORK"; else echo "left $WORK (mounts)"; fi
}
trap cleanup EXIT

[ "$(id -u)" = 0 ] || { fail "needs root"; exit 1; }
need_pkgs=()
command -v umoci >/dev/null || need_pkgs+=(umoci)
command -v runc >/dev/null || need_pkgs+=(runc)
command -v unshare >/dev/null || need_pkgs+=(util-linux)
if [ ${#need_pkgs[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq "${need_pkgs[@]}" >/dev/null 2>&1 ||
        { apt-get update -qq && apt-get install -y -qq "${need_pkgs[@]}" >/dev/null; }
fi

# --- 1. the rootfs ----------------------------------------------------------
"$ROOT/packaging/assemble-rootfs.sh" "$RFS" "$BIN"
files=$(cd "$RFS" && find . -type f | sort | tr '\n' ' ')
want="./bin/bash ./bin/busybox ./bin/semaphore-agent ./etc/group ./etc/hosts ./etc/passwd ./etc/profile ./etc/ssl/certs/ca-certificates.crt "
if [ "$files" = "$want" ]; then
    pass "rootfs holds only agent, bash, busybox, CA bundle and /etc basics ($(du -sh "$RFS" | cut -f1))"
else
    fail "rootfs files: $files"
fi
for f in bin/semaphore-agent bin/bash bin/busybox; do
    case "$(file -b "$RFS/$f")" in
        *"statically linked"* | *"static-pie linked"*) pass "$f is static" ;;
        *) fail "$f is not static: $(file -b "$RFS/$f")" ;;
    esac
done
if n=$(python3 -c 'import ssl,sys; c=ssl.create_default_context(cafile=sys.argv[1]); print(c.cert_store_stats()["x509_ca"])' \
    "$RFS/etc/ssl/certs/ca-certificates.crt") && [ "$n" -gt 100 ]; then
    pass "CA bundle loads: $n CA certificates"
else
    fail "CA bundle does not load ($n)"
fi
cp "$JOB" "$RFS/job.yaml"
chmod 0644 "$RFS/job.yaml"

# --- the dev control plane --------------------------------------------------
HUB_BIN=""
if [ -f "$ROOT/examples/dev-hub.rs" ]; then
    if (cd "$ROOT" && cargo build --locked --quiet --example dev-hub) >"$WORK/hub-build.log" 2>&1; then
        HUB_BIN=$ROOT/target/debug/examples/dev-hub
    else
        fail "cannot build the dev-hub example: $(tail -5 "$WORK/hub-build.log")"
    fi
else
    skip "no examples/dev-hub.rs in this tree: 'start' against a control plane not tested"
fi

# start_hub LOG: a dev hub with examples/hello.yaml queued; sets HUB_ENDPOINT.
start_hub() {
    local log=$1
    HUB_ENDPOINT=""
    "$HUB_BIN" --port 0 --sync-every 200 "$JOB" >"$log" 2>&1 &
    HUB_PID=$!
    for _ in $(seq 100); do
        HUB_ENDPOINT=$(sed -n 's/^\[hub\] listening on \(127\.0\.0\.1:[0-9]*\)$/\1/p' "$log")
        [ -z "$HUB_ENDPOINT" ] || return 0
        kill -0 "$HUB_PID" 2>/dev/null || break
        sleep 0.1
    done
    return 1
}
stop_hub() {
    [ -z "$HUB_PID" ] || { kill -INT "$HUB_PID" 2>/dev/null; sleep 0.5; kill "$HUB_PID" 2>/dev/null; wait "$HUB_PID" 2>/dev/null || true; }
    HUB_PID=""
}

# --- the runtimes -----------------------------------------------------------
# in_oci NAME TIMEOUT ARGS...: run ARGS in a container of the OCI image.
setup_oci() {
    local L=$WORK/oci
    umoci init --layout "$L"
    umoci new --image "$L:agent"
    umoci unpack --image "$L:agent" "$WORK/oci-base"
    cp -a "$RFS/." "$WORK/oci-base/rootfs/"
    rm -f "$WORK/oci-base/rootfs/job.yaml"
    umoci repack --image "$L:agent" "$WORK/oci-base"
    umoci config --image "$L:agent" --config.user "$AGENT_UID:$AGENT_UID" \
        --config.workingdir /home/semaphore \
        --config.env "${IMAGE_ENV[0]}" --config.env "${IMAGE_ENV[1]}" \
        --config.entrypoint /bin/semaphore-agent --config.entrypoint start
    umoci gc --layout "$L"
    [ -z "${KEEP_OCI:-}" ] || { mkdir -p "$KEEP_OCI" && cp -a "$L/." "$KEEP_OCI/"; }
    echo "OCI image: $(du -sh "$L" | cut -f1) layout; $(umoci stat --image "$L:agent" | awk 'NR==2{print "layer " $1 ", " $(NF-1)}')"
    # A fresh bundle from the image, then the same job file dropped in.
    umoci unpack --image "$L:agent" "$WORK/bundle"
    cp "$RFS/job.yaml" "$WORK/bundle/rootfs/job.yaml"
}
in_oci() {
    local name=agent-smoke-$1 t=$2
    shift 2
    # Host network (the dev hub is on the host's loopback), no terminal,
    # no cgroup limits (this kernel runs cgroup v1 hybrid), ARGS appended to
    # the image's entrypoint as `docker run IMAGE ARGS` would.
    python3 - "$WORK/bundle/config.json" "$@" <<'EOF'
import json, sys
path, args = sys.argv[1], sys.argv[2:]
c = json.load(open(path))
c["process"]["terminal"] = False
c["process"]["args"] = ["/bin/semaphore-agent"] + args if args[0] != "/bin/bash" else args
c["linux"]["namespaces"] = [n for n in c["linux"]["namespaces"] if n["type"] != "network"]
c["linux"].pop("resources", None)
c["linux"].pop("cgroupsPath", None)
json.dump(c, open(path, "w"))
EOF
    timeout "$t" runc run --bundle "$WORK/bundle" "$name" </dev/null
}
in_chroot() {
    local t=$2
    shift 2
    local cmd=(/bin/semaphore-agent "$@")
    [ "$1" != /bin/bash ] || cmd=("$@")
    timeout "$t" unshare --mount --pid --fork --uts --ipc --propagation private \
        /bin/sh -c 'mount --rbind /dev "$0/dev" && mount -t proc proc "$0/proc" && exec "$@"' "$RFS" \
        env -i "${IMAGE_ENV[@]}" chroot --userspec=$AGENT_UID:$AGENT_UID "$RFS" "${cmd[@]}" </dev/null
}

runtimes=()
if setup_oci >"$WORK/oci-setup.log" 2>&1; then
    grep '^OCI image' "$WORK/oci-setup.log" || true
    if out=$(in_oci version 30 version 2>&1); then
        pass "[oci] umoci-built image runs under runc: version $out"
        runtimes+=(oci)
    else
        skip "[oci] runc cannot run containers on this machine: $(echo "$out" | tail -2)"
    fi
else
    fail "[oci] umoci could not build the image: $(tail -5 "$WORK/oci-setup.log")"
fi
if out=$(in_chroot version 30 version 2>&1); then
    pass "[chroot] runs under unshare+chroot: version $out"
    runtimes+=(chroot)
else
    fail "[chroot] version: $out"
fi

for rt in "${runtimes[@]}"; do
    run_in() { "in_$rt" "$@"; }

    if out=$(run_in applets 30 /bin/bash -c 'set -e; id -u; ls /etc/ssl/certs/ca-certificates.crt; sh -c "echo sh ok"; env | sort | tr "\n" " "' 2>&1) &&
        [[ $out == "$AGENT_UID"* ]]; then
        pass "[$rt] bash + busybox applets as uid $AGENT_UID: $(echo $out)"
    else
        fail "[$rt] bash/busybox: $out"
    fi

    rc=0
    out=$(run_in run 120 run /job.yaml 2>&1) || rc=$?
    if [ $rc = 0 ] && grep -q 'Hello from' <<<"$out"; then
        pass "[$rt] run examples/hello.yaml passed"
        indent 8 <<<"$out"
    else
        fail "[$rt] run examples/hello.yaml (exit $rc)"
        indent 30 <<<"$out"
    fi

    if [ -n "$HUB_BIN" ]; then
        hub_log=$WORK/hub-$rt.log
        if ! start_hub "$hub_log"; then
            fail "[$rt] dev-hub did not start: $(tail -5 "$hub_log")"
            stop_hub
            continue
        fi
        rc=0
        out=$(run_in start 120 start --endpoint "$HUB_ENDPOINT" --no-https --token dev \
            --name "smoke-$rt-agent" --disconnect-after-job 2>&1) || rc=$?
        sleep 0.3
        stop_hub
        if [ $rc = 0 ] && grep -q '^\[hub\] register' "$hub_log" && grep -q '^\[hub\] serving job' "$hub_log" &&
            grep '^\[hub\] sync' "$hub_log" | grep -q '"job_result":"passed","state":"finished-job"' &&
            grep -q '^\[hub\] disconnect' "$hub_log"; then
            pass "[$rt] start --disconnect-after-job: registered, ran hello.yaml to passed, disconnected, exit 0"
            grep -E '^\[hub\] (register|serving|disconnect)|finished-job' "$hub_log" | cut -c1-160 | indent 5
        else
            fail "[$rt] start --disconnect-after-job against the dev hub (agent exit $rc)"
            indent 15 <<<"$out"
            indent 25 <"$hub_log"
        fi
    fi
done

[ $failed = 0 ] || { echo "FAIL rootfs: some checks failed"; exit 1; }
echo "PASS rootfs: all checks (runtimes: ${runtimes[*]})"
