#!/usr/bin/env bash
# Builds both images with `docker build` and runs them the ways Semaphore's
# tooling runs its own agent image:
#   - the Helm chart: the image's default CMD, the config mounted at
#     /opt/semaphore/semaphore-agent.yml; it must register with the dev hub
#     and run a job;
#   - the Kubernetes controller: command /opt/semaphore/agent start with
#     flags (it must register and run a job too);
#   - no config mounted: a clear error naming the file, exit 2.
# And the layout: Cmd, user semaphore (1000), the agent on PATH, no kubectl
# in either image (the Kubernetes executor needs none), no CA certificates
# of this machine in the image.
#
# With an aarch64 agent and an arm64 Debian rootfs, the Debian image for
# linux/arm64 too (packaging/import-image.sh: the Dockerfile's RUN step done
# from the host, no emulation needed to build it). Checked statically: its
# platform, every executable in it aarch64, the Dockerfile's packages
# installed, and the same layout as the x86_64 image built from the
# Dockerfile (CMD, user, workdir, /opt/semaphore, the links, the home, the
# passwd and group lines). Run under emulation when binfmt_misc can hand
# aarch64 programs to qemu-aarch64-static (test-lib.sh's binfmt_aarch64):
# then every run below is done with it as well; when it cannot, a SKIP line
# says why.
#
# Usage: packaging/test-images.sh BIN BASE_TAR DEV_HUB [ARM64_BIN ARM64_BASE_TAR]
#   BIN       the static agent (packaging/build-static.sh)
#   BASE_TAR  the Debian rootfs tarball (packaging/base-rootfs.sh), imported
#             as the Dockerfile's BASE: no registry pull anywhere
#   DEV_HUB   the dev-hub example binary
#   ARM64_BIN       the static aarch64 agent (build-static.sh --arch arm64)
#   ARM64_BASE_TAR  the arm64 Debian rootfs (packaging/foreign-rootfs.sh arm64)
# Needs a Docker engine (DOCKER_HOST; .ci/docker.sh starts one). With
# CI=true a missing engine fails; elsewhere it is a SKIP.
set -euo pipefail

BIN=${1:?usage: $0 BIN BASE_TAR DEV_HUB}
BASE_TAR=${2:?usage: $0 BIN BASE_TAR DEV_HUB}
DEV_HUB=${3:?usage: $0 BIN BASE_TAR DEV_HUB}
ARM64_BIN=${4:-}
ARM64_BASE_TAR=${5:-}
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=packaging/test-lib.sh
. "$HERE/test-lib.sh"
if ! docker info >/dev/null 2>&1; then
    echo "SKIP images: no Docker engine reachable (DOCKER_HOST=${DOCKER_HOST:-unset})"
    [ "${CI:-}" != true ] || exit 1
    exit 0
fi
WORK=$(mktemp -d /var/tmp/agent-images-test.XXXXXX)
TAG=semaphore-agent-images-test-$$
IMAGES=()
BUILT=()
HUB_PID=""
cleanup() {
    [ -z "$HUB_PID" ] || { kill "$HUB_PID" 2>/dev/null; wait "$HUB_PID" 2>/dev/null; } || true
    # Only the images this run built (the imported base stays: it is cached).
    [ ${#BUILT[@]} = 0 ] || docker rmi -f "${BUILT[@]}" >/dev/null 2>&1 || true
    binfmt_aarch64_down
    rm -rf "$WORK"
}
trap cleanup EXIT
failed=0
pass() { echo "PASS images: $*"; }
fail() { echo "FAIL images: $*"; failed=1; }

# --- the base: imported once per tarball (its name carries the hash) ---------
BASE=semaphore-ci/$(basename "$BASE_TAR" .tar):latest
if ! docker image inspect "$BASE" >/dev/null 2>&1; then
    start=$(date +%s)
    docker import "$BASE_TAR" "$BASE" >/dev/null
    echo "images: imported $BASE in $(($(date +%s) - start))s"
fi

# --- build ------------------------------------------------------------------------
# The classic builder: BuildKit would try to pull its frontend and the
# scratch stage's metadata from a registry.
export DOCKER_BUILDKIT=0
mkdir -p "$WORK/ctx"
cp "$BIN" "$WORK/ctx/agent"
start=$(date +%s)
if out=$(docker build --network none -q -f "$HERE/Dockerfile" --build-arg BASE="$BASE" -t "$TAG:debian" "$WORK/ctx" 2>&1); then
    IMAGES+=("$TAG:debian")
    BUILT+=("$TAG:debian")
    pass "docker build packaging/Dockerfile (FROM $BASE, no network) in $(($(date +%s) - start))s"
else
    fail "docker build packaging/Dockerfile: $out"
fi
start=$(date +%s)
if "$HERE/assemble-rootfs.sh" "$WORK/rootfs" "$BIN" >"$WORK/assemble.log" 2>&1 &&
    out=$(docker build --network none -q -f "$HERE/Dockerfile.scratch" -t "$TAG:scratch" "$WORK/rootfs" 2>&1); then
    IMAGES+=("$TAG:scratch")
    BUILT+=("$TAG:scratch")
    pass "docker build packaging/Dockerfile.scratch in $(($(date +%s) - start))s"
else
    fail "docker build packaging/Dockerfile.scratch: $(cat "$WORK/assemble.log") ${out:-}"
fi

# --platform: the image's own (without it, an arm64 image's run starts with
# a warning on stderr).
plat() { echo "--platform=$(docker image inspect -f '{{.Os}}/{{.Architecture}}' "$1")"; }

# --- the Debian image for linux/arm64 ---------------------------------------------------
# layout IMAGE: what the Dockerfile's RUN and config decide, as text (the
# agent's size aside: it is another architecture's binary).
layout() {
    local image=$1 dir=$WORK/layout-${1##*:} cid
    docker image inspect -f 'Cmd {{json .Config.Cmd}} Entrypoint {{json .Config.Entrypoint}} User {{.Config.User}} WorkingDir {{.Config.WorkingDir}}' "$image"
    mkdir -p "$dir"
    cid=$(docker create "$(plat "$image")" "$image" /opt/semaphore/agent)
    docker export "$cid" | tar -C "$dir" -x opt usr/local/bin home etc/passwd etc/group etc/shadow
    docker rm "$cid" >/dev/null
    (cd "$dir" && find ./opt ./usr/local/bin ./home -printf '%p %M %u:%g %l\n' | sort)
    (cd "$dir/home/semaphore" && find . -type f -exec sha256sum {} + | sort -k2)
    grep '^semaphore:' "$dir/etc/passwd" "$dir/etc/group" | sed 's|^.*/etc/||'
    # (the shadow line without the day of the last password change)
    grep '^semaphore:' "$dir/etc/shadow" | cut -d: -f1,2,4-
}
if [ -n "$ARM64_BIN" ]; then
    A64=$TAG:debian-arm64
    start=$(date +%s)
    if out=$("$HERE/import-image.sh" linux/arm64 "$ARM64_BIN" "$ARM64_BASE_TAR" "$A64" 2>&1); then
        BUILT+=("$A64")
        pass "[debian-arm64] packaging/import-image.sh linux/arm64 (FROM the arm64 base, the Dockerfile's RUN done from the host) in $(($(date +%s) - start))s"
        platform=$(docker image inspect -f '{{.Os}}/{{.Architecture}}' "$A64")
        [ "$platform" = linux/arm64 ] && pass "[debian-arm64] platform $platform" || fail "[debian-arm64] platform $platform, not linux/arm64"
        # Every executable in it is aarch64 (and there are many: a Debian).
        cid=$(docker create --platform=linux/arm64 "$A64" /opt/semaphore/agent)
        mkdir -p "$WORK/a64fs"
        docker export "$cid" | tar -C "$WORK/a64fs" -x
        docker rm "$cid" >/dev/null
        elfs=$(find "$WORK/a64fs" -type f -print0 | xargs -0 file -N -F '|' | grep '| ELF ' || true)
        n=$(grep -c . <<<"$elfs" || true)
        other=$(grep -v 'ARM aarch64' <<<"$elfs" || true)
        [ "$n" -gt 100 ] && [ -z "$other" ] && grep -q '^[^|]*/opt/semaphore/agent| ELF 64-bit LSB executable, ARM aarch64.*statically linked' <<<"$elfs" &&
            pass "[debian-arm64] all $n ELF files are aarch64 (the agent static)" ||
            fail "[debian-arm64] ELF files ($n): not aarch64: $(head -5 <<<"$other")"
        missing=""
        for p in $(sed -n 's/^ *for p in \(.*\); do.*/\1/p' "$HERE/Dockerfile" | head -1); do
            grep -qx "Package: $p" "$WORK/a64fs/var/lib/dpkg/status" || missing+=" $p"
        done
        [ -z "$missing" ] && pass "[debian-arm64] the Dockerfile's packages are installed (dpkg status)" ||
            fail "[debian-arm64] packages missing:$missing"
        rm -rf "$WORK/a64fs"
        if [[ " ${IMAGES[*]} " == *" $TAG:debian "* ]]; then
            want=$(layout "$TAG:debian")
            got=$(layout "$A64")
            [ "$want" = "$got" ] && pass "[debian-arm64] the x86_64 Debian image's layout: CMD, user, workdir, /opt/semaphore, links, home, passwd/group/shadow ($(grep -c . <<<"$got") lines equal)" ||
                fail "[debian-arm64] layout differs from the x86_64 image: $(diff <(echo "$want") <(echo "$got") | head -10)"
        fi
        if binfmt_aarch64 "$ARM64_BIN"; then
            IMAGES+=("$A64")
            echo "images: [debian-arm64] binfmt_misc hands aarch64 programs to $BINFMT_INTERP: the runs below include it"
        else
            echo "SKIP images: [debian-arm64] not run: $BINFMT_WHY (its layout was checked above, statically)"
        fi
    else
        fail "[debian-arm64] packaging/import-image.sh: $out"
    fi
fi

# --- a dev hub with one job per run below ---------------------------------------------
cat >"$WORK/job.yaml" <<'EOF'
commands:
  - directive: echo "in the image as $(id -un) ($(id -u)), HOME=$HOME"
  - directive: test "$(id -u)" = 1000
EOF
# One job each for the Helm way and the controller's way, per image.
jobs=()
for _ in "${IMAGES[@]}" "${IMAGES[@]}"; do jobs+=("$WORK/job.yaml"); done
start_dev_hub "${jobs[@]}" || { fail "dev hub did not start: $(cat "$WORK/hub.log")"; exit 1; }
# The Helm chart's keys, pointed at the hub.
cat >"$WORK/semaphore-agent.yml" <<EOF
endpoint: "$HUB"
token: "dev"
no-https: true
name-from-env: KUBERNETES_POD_NAME
interruption-grace-period: 60
disconnect-after-job: true
EOF
chmod 0644 "$WORK/semaphore-agent.yml"
passed_jobs() { grep '^\[hub\] sync' "$WORK/hub.log" | grep -c '"job_result":"passed","state":"finished-job"' || true; }

for image in "${IMAGES[@]}"; do
    kind=${image##*:}
    # Layout.
    cmd=$(docker image inspect -f '{{json .Config.Cmd}}' "$image")
    user=$(docker image inspect -f '{{.Config.User}}' "$image")
    [ "$cmd" = '["/opt/semaphore/agent","start","--config-file","/opt/semaphore/semaphore-agent.yml"]' ] &&
        pass "[$kind] default CMD is Semaphore's: $cmd" || fail "[$kind] Cmd $cmd"
    if out=$(docker run --rm "$(plat "$image")" --network none --entrypoint /bin/bash "$image" -c \
        'echo "$(id -un) $(id -u) $(id -g) $HOME"; command -v agent semaphore-agent; /opt/semaphore/agent version' 2>&1) &&
        [[ $(head -1 <<<"$out") == "semaphore 1000 1000 /home/semaphore" ]] && [ "$(tail -1 <<<"$out")" = "$("$BIN" version)" ]; then
        pass "[$kind] runs as semaphore (1000:1000, user '$user'); agent on PATH: $(sed -n 2,3p <<<"$out" | tr '\n' ' ')"
    else
        fail "[$kind] user/PATH/version: $out"
    fi
    # No mounted config: a clear error naming the file.
    rc=0
    out=$(docker run --rm "$(plat "$image")" --network none "$image" 2>&1) || rc=$?
    [ $rc = 2 ] && [[ $out == *"/opt/semaphore/semaphore-agent.yml"* ]] &&
        pass "[$kind] without a config: exit 2, '$(tail -1 <<<"$out")'" || fail "[$kind] without a config: exit $rc: $out"
    # The Helm chart's way: the default CMD with the config mounted.
    before=$(passed_jobs)
    rc=0
    out=$(timeout 120 docker run --rm "$(plat "$image")" --network host -e KUBERNETES_POD_NAME="helm-pod-$kind-0001" \
        -v "$WORK/semaphore-agent.yml:/opt/semaphore/semaphore-agent.yml:ro" "$image" 2>&1) || rc=$?
    if [ $rc = 0 ] && [ "$(passed_jobs)" -gt "$before" ] && grep -q "\"name\":\"helm-pod-$kind-0001\"" "$WORK/hub.log"; then
        pass "[$kind] default CMD + mounted config: registered as helm-pod-$kind-0001, ran a job (passed), exit 0"
    else
        fail "[$kind] default CMD + mounted config: exit $rc: $(tail -5 <<<"$out"); hub: $(tail -3 "$WORK/hub.log")"
    fi
done

# The Kubernetes controller's way (its Job's command and args, the token
# from the environment), for both images alike; neither has kubectl.
for image in "${IMAGES[@]}"; do
    kind=${image##*:}
    if out=$(docker run --rm "$(plat "$image")" --network none --entrypoint /bin/sh "$image" -c 'command -v kubectl' 2>&1); then
        fail "[$kind] kubectl is in the image: $out"
    else
        pass "[$kind] no kubectl in the image"
    fi
    before=$(passed_jobs)
    rc=0
    out=$(timeout 120 docker run --rm "$(plat "$image")" --network host -e SEMAPHORE_AGENT_TOKEN=dev -e SEMAPHORE_AGENT_NAME="controller-job-$kind" \
        -e KUBERNETES_NAMESPACE=default "$image" /opt/semaphore/agent start --endpoint "$HUB" --no-https \
        --disconnect-after-job 2>&1) || rc=$?
    if [ $rc = 0 ] && [ "$(passed_jobs)" -gt "$before" ]; then
        pass "[$kind] command /opt/semaphore/agent start + flags: ran a job (passed), exit 0"
    else
        fail "[$kind] controller-style start: exit $rc: $(tail -5 <<<"$out")"
    fi
done

# The Helm chart's whole config as its Secret renders it (endpoint
# unquoted, the Kubernetes executor on, allowed images, pod spec, pre-job
# hook), mounted 0644 as the chart mounts it: the agent in the image loads
# it and registers under the pod's name (no job is queued any more, so no
# pod is asked for); `docker stop` then ends it cleanly (SIGTERM, the hub's
# shutdown, exit 0).
if [[ " ${IMAGES[*]} " == *" $TAG:debian "* ]]; then
    cat >"$WORK/helm-secret.yml" <<EOF
name-from-env: KUBERNETES_POD_NAME
kubernetes-executor: true
endpoint: $HUB
token: dev
interruption-grace-period: 300
disconnect-after-job: false
kubernetes-allowed-images:
  - ^ubuntu:2[24]\.04$
kubernetes-pod-spec: semaphore-agent-pod-spec
pre-job-hook-path: /opt/semaphore/hooks/pre-job-hook
fail-on-pre-job-hook-error: false
source-pre-job-hook: true
no-https: true
EOF
    chmod 0644 "$WORK/helm-secret.yml"
    name=helm-chart-pod-7d9f8b-x2k4q
    if cid=$(docker run -d --network host -e KUBERNETES_NAMESPACE=default -e KUBERNETES_POD_NAME=$name \
        -v "$WORK/helm-secret.yml:/opt/semaphore/semaphore-agent.yml:ro" "$TAG:debian" 2>&1); then
        registered=""
        for _ in $(seq 1 200); do
            if grep -q "\"name\":\"$name\"" "$WORK/hub.log"; then registered=1; break; fi
            [ "$(docker inspect -f '{{.State.Running}}' "$cid" 2>/dev/null)" = true ] || break
            sleep 0.1
        done
        docker stop -t 30 "$cid" >/dev/null 2>&1 || true
        code=$(docker inspect -f '{{.State.ExitCode}}' "$cid" 2>/dev/null || echo '?')
        logs=$(docker logs "$cid" 2>&1 | tail -3)
        docker rm -f "$cid" >/dev/null 2>&1 || true
        if [ -n "$registered" ] && [ "$code" = 0 ]; then
            pass "[debian] the Helm chart's full config (kubernetes-executor, allowed images, pod spec, pre-job hook) loads; registered as $name; docker stop: exit 0"
        else
            fail "[debian] Helm chart config: registered '${registered:-no}', exit $code: $logs"
        fi
    else
        fail "[debian] docker run -d: $cid"
    fi
fi

# None of this machine's own CA certificates went into an image.
for image in "${IMAGES[@]}"; do
    for crt in /usr/local/share/ca-certificates/*.crt; do
        [ -f "$crt" ] || continue
        line=$(sed -n 2p "$crt")
        if docker run --rm "$(plat "$image")" --network none --entrypoint /bin/sh "$image" -c 'cat /etc/ssl/certs/*.crt /etc/ssl/certs/*.pem 2>/dev/null' |
            grep -qF "$line"; then
            fail "[$image] holds this machine's CA $(basename "$crt")"
        else
            pass "[${image##*:}] does not hold this machine's CA $(basename "$crt")"
        fi
    done
done

[ $failed = 0 ] || { echo "FAIL images: some checks failed"; exit 1; }
echo "PASS images: all checks"
