#!/usr/bin/env bash
# The release archives, named and laid out as Semaphore's Go agent ships
# them, so its docs, the AWS stack and anything else that downloads
# agent_Linux_x86_64.tar.gz works with ours unchanged:
#   agent_Linux_x86_64.tar.gz    agent (static musl), install.sh, README.md, LICENSE
#   agent_Linux_arm64.tar.gz     the same, agent a static aarch64 musl binary
#   agent_Windows_x86_64.tar.gz  agent.exe, install.ps1, README.md, LICENSE
#   checksums.txt                sha256sum lines ("<hex>  <file>"), as goreleaser writes
#
# Usage: packaging/release.sh [--version V] [--linux BIN] [--linux-arm64 BIN]
#                             [--windows EXE] [--out DIR]
#   --version  the release version `agent version` prints (default:
#              $SEMAPHORE_AGENT_VERSION, else Cargo.toml's version). A binary
#              built here gets it at compile time (SEMAPHORE_AGENT_VERSION,
#              read by option_env! in src/lib.rs).
#   --linux / --linux-arm64 / --windows  reuse binaries already built (CI
#              builds each once); without them build-static.sh [--arch
#              arm64] / build-windows.sh build them. A given binary must
#              carry the version (the aarch64 one is asked through
#              qemu-aarch64-static on a host that is not aarch64).
#   --out      output directory (default target/dist); emptied first.
# The last line of stdout is the output directory.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VERSION=${SEMAPHORE_AGENT_VERSION:-}
LINUX_BIN=""
ARM64_BIN=""
WINDOWS_EXE=""
OUT=$ROOT/target/dist
log() { echo "release: $*" >&2; }
die() { echo "release: error: $*" >&2; exit 1; }
while [ $# -gt 0 ]; do
    case "$1" in
        --version) VERSION=${2:?--version needs a value}; shift ;;
        --linux) LINUX_BIN=${2:?--linux needs a path}; shift ;;
        --linux-arm64) ARM64_BIN=${2:?--linux-arm64 needs a path}; shift ;;
        --windows) WINDOWS_EXE=${2:?--windows needs a path}; shift ;;
        --out) OUT=${2:?--out needs a directory}; shift ;;
        *) die "unknown argument $1 (see the comment at the top of $0)" ;;
    esac
    shift
done
if [ -z "$VERSION" ]; then
    VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$ROOT/Cargo.toml" | head -1)
fi
[[ $VERSION =~ ^[A-Za-z0-9][A-Za-z0-9._+-]*$ ]] || die "the version '$VERSION' is not a tag-like word (v1.2.3, 1.2.3-rc.1)"
for f in README.md LICENSE packaging/install.sh packaging/install.ps1; do
    [ -f "$ROOT/$f" ] || die "$ROOT/$f is missing"
done

export SEMAPHORE_AGENT_VERSION=$VERSION
if [ -z "$LINUX_BIN" ]; then
    LINUX_BIN=$("$ROOT/packaging/build-static.sh" --no-check | tail -1)
fi
if [ -z "$ARM64_BIN" ]; then
    ARM64_BIN=$("$ROOT/packaging/build-static.sh" --arch arm64 --no-check | tail -1)
fi
if [ -z "$WINDOWS_EXE" ]; then
    WINDOWS_EXE=$("$ROOT/packaging/build-windows.sh" | tail -1)
fi
[ -f "$LINUX_BIN" ] || die "no Linux binary at $LINUX_BIN"
[ -f "$ARM64_BIN" ] || die "no Linux arm64 binary at $ARM64_BIN"
[ -f "$WINDOWS_EXE" ] || die "no Windows binary at $WINDOWS_EXE"
# check_linux BIN ARCH_WORD (file's word) [RUNNER...]: static, of that
# architecture, and of this version.
check_linux() {
    local bin=$1 arch=$2 got desc
    shift 2
    desc=$(file -b "$bin")
    [[ $desc == *", $arch,"* ]] || die "$bin is not an $arch binary: $desc"
    [[ $desc =~ (static-pie|statically)\ linked ]] || die "$bin is not a static binary (use packaging/build-static.sh): $desc"
    got=$("$@" "$bin" version) || die "$bin version failed"
    [ "$got" = "$VERSION" ] || die "$bin says it is version '$got', not $VERSION: build it with SEMAPHORE_AGENT_VERSION=$VERSION"
}
check_linux "$LINUX_BIN" x86-64
# A foreign binary runs through qemu-user explicitly: binfmt_misc may not be
# mounted.
ARM64_RUN=()
[ "$(uname -m)" = aarch64 ] || ARM64_RUN=(qemu-aarch64-static)
[ ${#ARM64_RUN[@]} = 0 ] || command -v qemu-aarch64-static >/dev/null ||
    die "qemu-aarch64-static is needed to ask $ARM64_BIN its version (apt-get install qemu-user-static)"
check_linux "$ARM64_BIN" "ARM aarch64" "${ARM64_RUN[@]}"
# The .exe cannot run here; its version string is in its read-only data.
grep -aqF "$VERSION" "$WINDOWS_EXE" || die "$WINDOWS_EXE does not carry the version $VERSION: build it with SEMAPHORE_AGENT_VERSION=$VERSION"
[ "$(head -c 2 "$WINDOWS_EXE")" = MZ ] || die "$WINDOWS_EXE is not a Windows executable"

rm -rf "$OUT"
mkdir -p "$OUT"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
# Reproducible archives: fixed owner, order and timestamps (the commit's
# time when there is one), gzip without a name or time.
epoch=${SOURCE_DATE_EPOCH:-$(git -C "$ROOT" log -1 --format=%ct 2>/dev/null || echo 0)}
archive() { # NAME FILE...: files are in $stage/NAME
    local name=$1
    shift
    tar -C "$stage/$name" --sort=name --owner=0 --group=0 --numeric-owner \
        --mtime="@$epoch" --format=gnu -cf - "$@" | gzip -9n >"$OUT/$name.tar.gz"
    log "$OUT/$name.tar.gz: $(tar -tzf "$OUT/$name.tar.gz" | tr '\n' ' ')"
}
L=agent_Linux_x86_64
mkdir -p "$stage/$L"
install -m 0755 "$LINUX_BIN" "$stage/$L/agent"
install -m 0755 "$ROOT/packaging/install.sh" "$stage/$L/install.sh"
install -m 0644 "$ROOT/README.md" "$ROOT/LICENSE" "$stage/$L/"
archive $L agent install.sh README.md LICENSE
A=agent_Linux_arm64
mkdir -p "$stage/$A"
install -m 0755 "$ARM64_BIN" "$stage/$A/agent"
install -m 0755 "$ROOT/packaging/install.sh" "$stage/$A/install.sh"
install -m 0644 "$ROOT/README.md" "$ROOT/LICENSE" "$stage/$A/"
archive $A agent install.sh README.md LICENSE
W=agent_Windows_x86_64
mkdir -p "$stage/$W"
install -m 0755 "$WINDOWS_EXE" "$stage/$W/agent.exe"
install -m 0644 "$ROOT/packaging/install.ps1" "$ROOT/README.md" "$ROOT/LICENSE" "$stage/$W/"
archive $W agent.exe install.ps1 README.md LICENSE
(cd "$OUT" && sha256sum $A.tar.gz $L.tar.gz $W.tar.gz >checksums.txt)
log "version $VERSION; checksums.txt:"
sed 's/^/  /' "$OUT/checksums.txt" >&2
echo "$OUT"
