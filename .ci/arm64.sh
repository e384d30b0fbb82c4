#!/usr/bin/env bash
# CI for Linux arm64 (aarch64): cross-build the static aarch64 musl agent
# (packaging/build-static.sh --arch arm64) and prove it under emulation
# (Debian's qemu-user-static, called explicitly: binfmt_misc need not be
# mounted). Run by .ci/run before .ci/packaging.sh, whose release stage
# packs this binary into agent_Linux_arm64.tar.gz.
#
# Checks, each a PASS/FAIL line:
#   - check-static.sh: `file` says statically linked aarch64, stripped, no
#     interpreter or NEEDED entries, no glibc, < 6 MB, and `version` plus
#     two jobs run in an empty chroot (through qemu-aarch64-static);
#   - `agent run` under qemu of the example jobs: exit codes (a passing and
#     a failing job), env vars and files (examples/env-and-files.yaml), a
#     self-stopped job, and a job stopped by SIGINT;
#   - `agent start --disconnect-after-job` under qemu against the dev hub
#     (examples/dev-hub.rs): registers with arch "arm64", runs a job to
#     passed, disconnects, exits 0; start → register and idle RSS printed;
#   - the arm64 scratch image's tree (assemble-rootfs.sh): only aarch64
#     executables; its bash and busybox run under qemu.
#
# Cache: /var/tmp/semaphore-ci-arm64 (SEMAPHORE_CI_ARM64), owned by this
# script: the arm64 .deb files and the cross build's target directory, so a
# rerun rebuilds only what changed.
#
# Usage: .ci/arm64.sh   (root, Debian bookworm). The last line of stdout is
# the aarch64 binary's path.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD
CACHE=${SEMAPHORE_CI_ARM64:-/var/tmp/semaphore-ci-arm64}
WORK=$(mktemp -d /tmp/agent-arm64-ci.XXXXXX)
HUB_PID=""
AGENT_PID=""
failed=0
pass() { echo "PASS arm64: $*"; }
fail() { echo "FAIL arm64: $*"; failed=1; }
indent() { tail -n "${1:-20}" | sed 's/^/  | /'; }
cleanup() {
    [ -z "$AGENT_PID" ] || kill "$AGENT_PID" 2>/dev/null
    [ -z "$HUB_PID" ] || kill "$HUB_PID" 2>/dev/null
    wait 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT
t0=$(date +%s)

need=()
command -v qemu-aarch64-static >/dev/null || need+=(qemu-user-static)
command -v file >/dev/null || need+=(file)
if [ ${#need[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null 2>&1 ||
        { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null; } ||
        { echo "FAIL arm64: cannot install ${need[*]}"; exit 1; }
fi
QEMU=(qemu-aarch64-static)
[ "$(uname -m)" != aarch64 ] || QEMU=()

# --- the build --------------------------------------------------------------
mkdir -p "$CACHE"
start=$(date +%s)
if ! out=$(CARGO_TARGET_DIR=$CACHE/target SEMAPHORE_ARM64_DEBS=$CACHE/debs \
    nice -n 10 packaging/build-static.sh --arch arm64 --no-check 2>"$WORK/build.log"); then
    indent 30 <"$WORK/build.log"
    echo "FAIL arm64: packaging/build-static.sh --arch arm64"
    exit 1
fi
BIN=$(tail -1 <<<"$out")
pass "built $BIN in $(($(date +%s) - start))s: $(stat -c %s "$BIN") bytes"

# --- static, small, runs in an empty chroot ----------------------------------
if packaging/check-static.sh "$BIN" >"$WORK/static.log" 2>&1; then
    pass "check-static.sh: $(grep -c '^PASS' "$WORK/static.log") checks ($(sed -n 's/^file: //p' "$WORK/static.log" | cut -d, -f1,2,4,6))"
else
    fail "check-static.sh"
    indent 40 <"$WORK/static.log"
fi
desc=$(file -b "$BIN")
[[ $desc == *"ARM aarch64"*"statically linked"* ]] && pass "file: $(cut -d, -f1,2,4,6 <<<"$desc")" ||
    fail "file does not say static aarch64: $desc"
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
got=$(timeout 60 "${QEMU[@]}" "$BIN" version 2>&1)
[ "$got" = "$version" ] && pass "'agent version' under ${QEMU[*]:-native}: $got" || fail "'agent version' says: $got"

# --- agent run of the example jobs -------------------------------------------
# A private HOME for the jobs' files (~/demo) and the agent's state.
mkdir -p "$WORK/home"
agent() { env -i HOME="$WORK/home" PATH=/usr/bin:/bin timeout 120 "${QEMU[@]}" "$BIN" "$@"; }
run_job() { # NAME WANT_EXIT WANT_RESULT [TEXT | !TEXT ...]: output holds (lacks) each
    local name=$1 want_rc=$2 want_result=$3 rc=0 out line
    shift 3
    out=$(cd "$WORK" && agent run "$ROOT/examples/$name.yaml" --json 2>&1) || rc=$?
    line=$(grep '"result"' <<<"$out" | tail -1)
    local ok=1
    [ "$rc" = "$want_rc" ] && [[ $line == *"\"result\":\"$want_result\""* ]] || ok=0
    for g in "$@"; do
        if [ "${g:0:1}" = '!' ]; then
            ! grep -qF -- "${g:1}" <<<"$out" || { ok=0; echo "  unexpected: ${g:1}"; }
        else
            grep -qF -- "$g" <<<"$out" || { ok=0; echo "  missing: $g"; }
        fi
    done
    if [ $ok = 1 ]; then
        pass "run examples/$name.yaml: exit $rc, $want_result"
    else
        fail "run examples/$name.yaml: exit $rc (want $want_rc), last: $line (want $want_result)"
        indent 25 <<<"$out"
    fi
}
run_job hello 0 passed 'Hello from' '"exit_code":0'
# (JSON escapes the quote and the dollar stays literal.)
run_job env-and-files 0 passed 'hello world / it' 'PATH:/etc/a' 'line two' '600 ' 'script says: hello world'
run_job epilogues 1 failed '"exit_code":1' 'always, result=failed' 'only when failed' '!only when passed' '!never runs'
run_job self-stop 0 passed 'stopping job and marking it as passed' '!never runs' '!epilogues are skipped'

# A stop: SIGINT to the agent while its job sleeps.
printf 'commands:\n  - directive: echo started\n  - directive: sleep 60\n  - directive: echo never\n' >"$WORK/sleep.yaml"
(cd "$WORK" && exec env -i HOME="$WORK/home" PATH=/usr/bin:/bin "${QEMU[@]}" "$BIN" run "$WORK/sleep.yaml" --json >"$WORK/stop.out" 2>&1) &
AGENT_PID=$!
for _ in $(seq 300); do grep -q '"directive":"sleep 60"' "$WORK/stop.out" 2>/dev/null && break; sleep 0.1; done
sleep 0.5
kill -INT "$AGENT_PID" 2>/dev/null
rc=0
for _ in $(seq 300); do kill -0 "$AGENT_PID" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$AGENT_PID" 2>/dev/null; then
    kill -KILL "$AGENT_PID"
    rc=timeout
fi
wait "$AGENT_PID" 2>/dev/null || [ "$rc" = timeout ] || rc=$?
AGENT_PID=""
last=$(grep '"result"' "$WORK/stop.out" | tail -1)
if [ "$rc" = 1 ] && [[ $last == *'"result":"stopped"'* ]] && ! grep -q '"directive":"echo never"' "$WORK/stop.out"; then
    pass "SIGINT stops a running job: exit 1, stopped"
else
    fail "SIGINT to 'agent run' (exit $rc): $last"
    indent 20 <"$WORK/stop.out"
fi

# --- start --disconnect-after-job against the dev hub ------------------------
hub_bin=$ROOT/target/debug/examples/dev-hub
if ! cargo build --locked --quiet --example dev-hub >"$WORK/hub-build.log" 2>&1; then
    fail "cannot build the dev hub: $(tail -5 "$WORK/hub-build.log")"
else
    "$hub_bin" --port 0 --sync-every 100 "$ROOT/examples/env-and-files.yaml" >"$WORK/hub.log" 2>&1 &
    HUB_PID=$!
    HUB=""
    for _ in $(seq 100); do
        HUB=$(sed -n 's/^\[hub\] listening on \(127\.0\.0\.1:[0-9]*\)$/\1/p' "$WORK/hub.log")
        [ -z "$HUB" ] || break
        sleep 0.1
    done
    if [ -z "$HUB" ]; then
        fail "the dev hub did not start: $(tail -5 "$WORK/hub.log")"
    else
        t_spawn=$(date +%s%N)
        agent start --endpoint "$HUB" --no-https --token dev --name arm64-ci-agent \
            --disconnect-after-job >"$WORK/start.out" 2>&1 &
        AGENT_PID=$!
        t_reg=""
        for _ in $(seq 3000); do
            grep -q '^\[hub\] register' "$WORK/hub.log" && { t_reg=$(date +%s%N); break; }
            kill -0 "$AGENT_PID" 2>/dev/null || break
            sleep 0.01
        done
        rc=0
        for _ in $(seq 1200); do kill -0 "$AGENT_PID" 2>/dev/null || break; sleep 0.1; done
        wait "$AGENT_PID" || rc=$?
        AGENT_PID=""
        kill "$HUB_PID" 2>/dev/null
        wait "$HUB_PID" 2>/dev/null
        HUB_PID=""
        if [ $rc = 0 ] && grep '^\[hub\] register' "$WORK/hub.log" | grep '"arch":"arm64"' >/dev/null &&
            grep -q '^\[hub\] serving job' "$WORK/hub.log" &&
            grep '^\[hub\] sync' "$WORK/hub.log" | grep '"job_result":"passed","state":"finished-job"' >/dev/null &&
            grep -q '^\[hub\] disconnect' "$WORK/hub.log" && grep -q 'script says: hello world' "$WORK/hub.log"; then
            pass "start --disconnect-after-job: registered with arch arm64 (start → register $(((t_reg - t_spawn) / 1000000)) ms under emulation), ran env-and-files.yaml to passed, disconnected, exit 0"
            grep -o '"arch":"[^"]*"' "$WORK/hub.log" | head -1 | indent 1
        else
            fail "start --disconnect-after-job against the dev hub (agent exit $rc)"
            indent 15 <"$WORK/start.out"
            indent 25 <"$WORK/hub.log"
        fi
    fi
    # A figure, not a check: the idle agent's resident size under qemu-user
    # (emulator included) after 3 s of syncing every 100 ms with no job.
    "$hub_bin" --port 0 --sync-every 100 >"$WORK/hub-idle.log" 2>&1 &
    HUB_PID=$!
    HUB=""
    for _ in $(seq 100); do
        HUB=$(sed -n 's/^\[hub\] listening on \(127\.0\.0\.1:[0-9]*\)$/\1/p' "$WORK/hub-idle.log")
        [ -z "$HUB" ] || break
        sleep 0.1
    done
    if [ -n "$HUB" ]; then
        env -i HOME="$WORK/home" PATH=/usr/bin:/bin "${QEMU[@]}" "$BIN" start --endpoint "$HUB" --no-https \
            --token dev --name arm64-ci-idle >"$WORK/idle.out" 2>&1 &
        AGENT_PID=$!
        for _ in $(seq 300); do grep -q '^\[hub\] register' "$WORK/hub-idle.log" && break; sleep 0.1; done
        sleep 3
        echo "arm64: idle agent under ${QEMU[*]:-no emulator} (emulator included): VmRSS $(awk '/^VmRSS/ {print $2, $3}' "/proc/$AGENT_PID/status" 2>/dev/null)"
        kill "$AGENT_PID" 2>/dev/null
        wait "$AGENT_PID" 2>/dev/null
        AGENT_PID=""
    fi
    kill "$HUB_PID" 2>/dev/null
    wait "$HUB_PID" 2>/dev/null
    HUB_PID=""
fi

# --- install.sh on an aarch64 host ------------------------------------------------
# The installer is architecture-neutral bash; what depends on the host is
# the toolbox it downloads (uname -m), checked here on install.sh's own
# function with the words aarch64 Linux and arm64 macOS hosts report.
tb=$(
    # shellcheck disable=SC1090
    source <(sed -n '/^toolbox_url() {$/,/^}$/p' packaging/install.sh)
    for host in Linux:aarch64 Linux:x86_64 Darwin:arm64; do
        DIST=${host%%:*} ARCH=${host#*:} TOOLBOX_VERSION="" toolbox_url
        DIST=${host%%:*} ARCH=${host#*:} TOOLBOX_VERSION=v1.21.9 toolbox_url
    done
)
want_tb="https://github.com/semaphoreci/toolbox/releases/latest/download/self-hosted-linux-arm.tar
https://github.com/semaphoreci/toolbox/releases/download/v1.21.9/self-hosted-linux-arm.tar
https://github.com/semaphoreci/toolbox/releases/latest/download/self-hosted-linux.tar
https://github.com/semaphoreci/toolbox/releases/download/v1.21.9/self-hosted-linux.tar
https://github.com/semaphoreci/toolbox/releases/latest/download/self-hosted-darwin-arm.tar
https://github.com/semaphoreci/toolbox/releases/download/v1.21.9/self-hosted-darwin-arm.tar"
[ "$tb" = "$want_tb" ] && pass "install.sh on aarch64 picks the arm toolbox: $(head -1 <<<"$tb")" ||
    fail "install.sh's toolbox URLs (aarch64, x86_64, macOS arm64; latest and v1.21.9): $tb"

# --- the arm64 scratch tree ---------------------------------------------------
RFS=$WORK/rootfs
if SEMAPHORE_ROOTFS_DEBS=$CACHE/debs packaging/assemble-rootfs.sh --arch arm64 "$RFS" "$BIN" >"$WORK/rootfs.log" 2>&1; then
    pass "$(tail -1 "$WORK/rootfs.log")"
    bad=""
    n=0
    while IFS= read -r -d '' f; do
        [ "$(head -c 4 "$f" | od -An -c | tr -d ' ')" = '177ELF' ] || continue
        n=$((n + 1))
        d=$(file -b "$f")
        [[ $d == *"ARM aarch64"*"statically linked"* ]] || bad+="${f#"$RFS"}: $d; "
    done < <(find "$RFS" -type f -print0)
    [ -z "$bad" ] && [ $n = 3 ] && pass "the tree's $n executables are all static aarch64 (agent, bash, busybox)" ||
        fail "the tree's executables ($n): ${bad:-not the three expected}"
    out=$(timeout 60 "${QEMU[@]}" "$RFS/bin/bash" -c 'echo "bash $BASH_VERSION on $HOSTTYPE"' 2>&1) &&
        [[ $out == *aarch64* ]] && pass "the tree's bash runs: $out" || fail "the tree's bash: $out"
    out=$(timeout 60 "${QEMU[@]}" "$RFS/bin/busybox" uname -m 2>&1) &&
        [ "$out" = aarch64 ] && pass "the tree's busybox runs: uname -m says $out" || fail "the tree's busybox: $out"
else
    fail "assemble-rootfs.sh --arch arm64"
    indent 20 <"$WORK/rootfs.log"
fi

# --- the images for linux/arm64 ---------------------------------------------------
# The scratch image is that tree copied FROM scratch: no RUN step, so
# `docker build --platform linux/arm64` builds it here without emulation;
# its one layer must hold exactly the tree, aarch64 executables only. The
# Debian image for linux/arm64 is the packaging stage's (test-images.sh:
# packaging/import-image.sh on packaging/foreign-rootfs.sh's arm64 base,
# run under binfmt_misc when it can be had); here only its packages are
# looked up in Debian's arm64 lists.
if [ -d "$RFS/bin" ] && docker info >/dev/null 2>&1; then
    tag=semaphore-agent-arm64-ci-$$
    if out=$(DOCKER_BUILDKIT=0 docker build --platform linux/arm64 --network none -q \
        -f packaging/Dockerfile.scratch -t "$tag" "$RFS" 2>&1); then
        platform=$(docker image inspect -f '{{.Os}}/{{.Architecture}}' "$tag")
        cmd=$(docker image inspect -f '{{json .Config.Cmd}} {{.Config.User}}' "$tag")
        mkdir -p "$WORK/save" "$WORK/layer"
        docker save "$tag" | tar -C "$WORK/save" -xf -
        layers=$(find "$WORK/save" -name layer.tar | wc -l)
        find "$WORK/save" -name layer.tar -exec tar -C "$WORK/layer" -xf {} \;
        want=$(cd "$RFS" && find . | sort)
        got=$(cd "$WORK/layer" && find . | sort)
        elf_bad=""
        while IFS= read -r -d '' f; do
            [ "$(head -c 4 "$f" | od -An -c | tr -d ' ')" = '177ELF' ] || continue
            [[ $(file -b "$f") == *"ARM aarch64"* ]] || elf_bad+="${f#"$WORK/layer"} "
        done < <(find "$WORK/layer" -type f -print0)
        if [ "$platform" = linux/arm64 ] && [ "$layers" = 1 ] && [ "$want" = "$got" ] && [ -z "$elf_bad" ] &&
            [ "$cmd" = '["/opt/semaphore/agent","start","--config-file","/opt/semaphore/semaphore-agent.yml"] 1000:1000' ]; then
            pass "docker build --platform linux/arm64 Dockerfile.scratch: $platform, one layer holding exactly the tree (aarch64 executables only), CMD and user as the x86_64 image"
        else
            fail "arm64 scratch image: platform $platform, $layers layers, cmd $cmd, non-aarch64: ${elf_bad:-none}, tree differs: $(diff <(echo "$want") <(echo "$got") | head -5 | tr '\n' ' ')"
        fi
        docker rmi -f "$tag" >/dev/null 2>&1
    else
        fail "docker build --platform linux/arm64 Dockerfile.scratch: $out"
    fi
elif [ -d "$RFS/bin" ]; then
    echo "SKIP arm64: no Docker engine (DOCKER_HOST=${DOCKER_HOST:-unset}): the arm64 scratch image is not built"
    [ "${CI:-}" != true ] || fail "CI=true and no Docker engine"
fi
A=$CACHE/debs/.apt
if [ -d "$A/lists" ]; then
    pkgs=$(sed -n 's/^ *for p in \(.*\); do.*/\1/p' packaging/Dockerfile | head -1)
    missing=""
    for p in $pkgs; do
        apt-cache -o "Dir::State::Lists=$A/lists" -o "Dir::State::status=$A/status" -o "Dir::Cache=$A/cache" \
            -o APT::Architecture=arm64 -o "APT::Architectures::=arm64" show "$p" 2>/dev/null |
            grep -E '^Architecture: (arm64|all)$' >/dev/null || missing+="$p " # (no -q: pipefail and SIGPIPE)
    done
    [ -n "$pkgs" ] && [ -z "$missing" ] && pass "packaging/Dockerfile's packages ($pkgs) exist for arm64 in Debian bookworm" ||
        fail "packaging/Dockerfile's packages for arm64: '${pkgs}' missing: $missing"
fi

echo "arm64: $(($(date +%s) - t0))s in all"
[ $failed = 0 ] || { echo "FAIL arm64: some checks failed"; exit 1; }
echo "PASS arm64: all checks"
echo "$BIN"
