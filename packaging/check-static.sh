#!/usr/bin/env bash
# Prove that a semaphore-agent binary is a self-sufficient static executable.
#
# Usage: packaging/check-static.sh BINARY [JOB_YAML]
#   JOB_YAML defaults to packaging/jobs/builtins.yaml (bash builtins only:
#   the jail has no other programs); its output must contain GREETING.
#
# Checks, each printed as PASS/FAIL:
#   - `file` says statically linked (static-pie counts) and the ELF has no
#     program interpreter or NEEDED entries;
#   - `ldd` finds nothing to load;
#   - no glibc inside (no GLIBC_ symbol versions, none of glibc's messages):
#     catches the silent fallback to glibc's libc.a;
#   - stripped size under 5 MB (x86_64), 6 MB (aarch64);
#   - it runs with an empty environment (`env -i`) inside a chroot that holds
#     only the binary, a static bash and a bound /dev (private mount ns):
#     `version`, `run JOB_YAML` and `run examples/hello.yaml`. Needs root
#     (chroot, mount).
# An aarch64 binary (`statically linked`, not PIE) on an x86_64 host runs
# in the chroot through a copy of qemu-aarch64-static (binfmt_misc need not
# be mounted); the job's bash is the host's static bash, which qemu-user
# starts natively.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${1:?usage: check-static.sh BINARY [JOB_YAML]}
JOB=${2:-$ROOT/packaging/jobs/builtins.yaml}
EXPECT=${EXPECT-hello from a static agent}
BASH_STATIC=/bin/bash-static
failed=0

pass() { echo "PASS static: $*"; }
fail() { echo "FAIL static: $*"; failed=1; }

[ -x "$BIN" ] || { fail "$BIN is not an executable file"; exit 1; }

desc=$(file -b "$BIN")
echo "file: $desc"
case "$desc" in
    *"static-pie linked"* | *"statically linked"*) pass "file says static" ;;
    *) fail "file does not say static: $desc" ;;
esac
# The architecture, and how to run it here.
RUN=()
case "$desc" in
    *", x86-64,"*) MAX_BYTES=$((5 * 1000 * 1000)) ;;
    *", ARM aarch64,"*)
        MAX_BYTES=$((6 * 1000 * 1000))
        if [ "$(uname -m)" != aarch64 ]; then
            command -v qemu-aarch64-static >/dev/null ||
                DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user-static >&2 ||
                { apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user-static >&2; }
            RUN=(/bin/qemu-aarch64-static)
        fi
        ;;
    *) fail "not an x86-64 or aarch64 executable: $desc"; exit 1 ;;
esac
case "$desc" in
    *", stripped"*) pass "stripped" ;;
    *) fail "not stripped" ;;
esac

if readelf -lW "$BIN" | grep -q 'INTERP'; then
    fail "has a program interpreter: $(readelf -lW "$BIN" | grep -A1 INTERP | tail -1)"
elif readelf -dW "$BIN" | grep -q 'NEEDED'; then
    fail "needs shared libraries: $(readelf -dW "$BIN" | grep NEEDED | tr '\n' ' ')"
else
    pass "no interpreter, no NEEDED libraries"
fi

# glibc's ldd prints "not a dynamic executable" for static and "statically
# linked" for static-pie; anything listing a .so is a failure.
ldd_out=$(ldd "$BIN" 2>&1 || true)
case "$ldd_out" in
    *"not a dynamic executable"* | *"statically linked"*) pass "ldd: $(echo $ldd_out)" ;;
    *) fail "ldd lists libraries: $ldd_out" ;;
esac

glibc_hits=$(strings -a "$BIN" | grep -E 'GLIBC_[0-9]|GLIBC_PRIVATE|[Gg]libc (error|detected)|Fatal glibc' | head -3 || true)
if [ -n "$glibc_hits" ]; then
    fail "glibc is linked in: $glibc_hits"
else
    pass "no glibc symbols or messages"
fi

size=$(stat -c %s "$BIN")
if [ "$size" -lt "$MAX_BYTES" ]; then
    pass "size $size bytes < $MAX_BYTES"
else
    fail "size $size bytes >= $MAX_BYTES"
fi

# --- the empty chroot -------------------------------------------------------
if [ "$(id -u)" != 0 ]; then
    fail "chroot run needs root"
    exit 1
fi
if [ ! -x "$BASH_STATIC" ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bash-static >&2 ||
        { apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bash-static >&2; }
fi
JAIL=$(mktemp -d /tmp/agent-jail.XXXXXX)
cleanup() {
    # The /dev bind lives in a private mount namespace that ends with each
    # run, so nothing should be mounted here; never delete through a mount.
    if grep -q " $JAIL/" /proc/mounts; then
        umount -R "$JAIL/dev" 2>/dev/null || umount -Rl "$JAIL/dev" 2>/dev/null || true
    fi
    grep -q " $JAIL/" /proc/mounts || rm -rf "$JAIL"
}
trap cleanup EXIT
mkdir -p "$JAIL/bin" "$JAIL/dev" "$JAIL/root" "$JAIL/tmp"
chmod 1777 "$JAIL/tmp"
install -m 0755 "$BIN" "$JAIL/bin/semaphore-agent"
install -m 0755 "$BASH_STATIC" "$JAIL/bin/bash"
[ ${#RUN[@]} = 0 ] || install -m 0755 "$(command -v qemu-aarch64-static)" "$JAIL/bin/qemu-aarch64-static"
echo "chroot contents: $(cd "$JAIL" && find . -path ./dev -prune -o -type f -print | sort | tr '\n' ' ') + /dev"

# Each run: a private mount namespace (so the mounts cannot leak to, or be
# unmounted from, the host's /dev), /dev bound recursively (the job's PTY
# needs /dev/pts), then chroot with an empty environment but HOME and PATH,
# as root in the jail; timeouts keep a hung job from hanging CI.
in_jail() {
    timeout "$1" unshare --mount --propagation private \
        /bin/sh -c 'mount --rbind /dev "$0/dev" && exec "$@"' "$JAIL" \
        env -i HOME=/root PATH=/bin /usr/sbin/chroot "$JAIL" "${RUN[@]}" /bin/semaphore-agent "${@:2}"
}
if out=$(in_jail 30 version 2>&1); then
    pass "runs in an empty chroot: $out"
else
    fail "does not run in an empty chroot: $out"
fi

if [ -f "$JOB" ]; then
    cp "$JOB" "$JAIL/job.yaml"
    rc=0
    out=$(in_jail 120 run /job.yaml 2>&1) || rc=$?
    if [ $rc = 0 ] && [[ $out == *"$EXPECT"* ]]; then
        pass "'run $(basename "$JOB")' passed in the empty chroot"
        echo "$out" | tail -n 15 | sed 's/^/  | /'
    else
        fail "'run $(basename "$JOB")' failed in the empty chroot (exit $rc)"
        echo "$out" | tail -n 30 | sed 's/^/  | /'
    fi
else
    fail "no job file $JOB"
fi

# The README's first job too (bash builtins only, like the one above).
cp "$ROOT/examples/hello.yaml" "$JAIL/hello.yaml"
rc=0
out=$(in_jail 120 run /hello.yaml 2>&1) || rc=$?
if [ $rc = 0 ] && [[ $out == *"Job passed"* ]]; then
    pass "'run examples/hello.yaml' passed in the empty chroot"
    echo "$out" | tail -n 8 | sed 's/^/  | /'
else
    fail "'run examples/hello.yaml' failed in the empty chroot (exit $rc)"
    echo "$out" | tail -n 30 | sed 's/^/  | /'
fi

[ $failed = 0 ] || { echo "FAIL static: $BIN"; exit 1; }
echo "PASS static: all checks on $BIN"
