# Sourced by the packaging tests (test-images.sh, test-install-sandbox.sh),
# not run: what more than one of them does the same way.

# start_dev_hub JOB_FILE...: starts the dev hub ("$DEV_HUB") on a free
# port with one job per file, logging to "$WORK/hub.log"; sets HUB_PID and
# HUB (127.0.0.1:PORT). Returns 1 when the hub has not said where it
# listens within about 10 s (the caller reports it, with the log).
start_dev_hub() {
    # Created here: the background child opens it, perhaps after the first poll.
    : >"$WORK/hub.log"
    "$DEV_HUB" --port 0 --sync-every 200 "$@" >"$WORK/hub.log" 2>&1 &
    HUB_PID=$!
    HUB=""
    for _ in $(seq 1 100); do
        HUB=$(sed -n 's/^\[hub\] listening on \(127\.0\.0\.1:[0-9]*\)$/\1/p' "$WORK/hub.log")
        [ -z "$HUB" ] || break
        sleep 0.1
    done
    [ -n "$HUB" ]
}

# binfmt_aarch64 PROBE: makes aarch64 ELF programs run on this host, as an
# arm64 chroot or container needs (a program's children included, which
# calling qemu-aarch64-static by hand cannot give), and checks it by running
# PROBE (an aarch64 program; its argument `version`). On an aarch64 host
# nothing is needed. Otherwise it uses an aarch64 handler binfmt_misc already
# has, or mounts binfmt_misc and registers Debian's qemu-aarch64-static
# under the name semaphore-ci-aarch64 with the F flag (the emulator is
# opened now, so it works inside chroots and containers);
# binfmt_aarch64_down removes what it registered or mounted. Returns 1 with
# BINFMT_WHY saying why when aarch64 programs cannot run; sets
# BINFMT_INTERP to the emulator's path ("" on an aarch64 host).
BINFMT_DIR=/proc/sys/fs/binfmt_misc
BINFMT_OURS=""
BINFMT_MOUNTED=""
BINFMT_WHY=""
BINFMT_INTERP=""
binfmt_aarch64() {
    local probe=$1 e
    if [ "$(uname -m)" = aarch64 ]; then
        "$probe" version >/dev/null 2>&1 && return 0
        BINFMT_WHY="$probe does not run on this aarch64 host"
        return 1
    fi
    if [ ! -f "$BINFMT_DIR/status" ]; then
        if mount -t binfmt_misc binfmt_misc "$BINFMT_DIR" 2>/dev/null; then
            BINFMT_MOUNTED=1
        else
            BINFMT_WHY="binfmt_misc is not mounted and cannot be (mount -t binfmt_misc: $(mount -t binfmt_misc binfmt_misc "$BINFMT_DIR" 2>&1 | head -1))"
            return 1
        fi
    fi
    for e in "$BINFMT_DIR"/*; do
        [ -f "$e" ] && grep -qx enabled "$e" 2>/dev/null && grep -q '^magic 7f454c460201010000000000000000000200b700' "$e" || continue
        BINFMT_INTERP=$(sed -n 's/^interpreter //p' "$e")
        break
    done
    if [ -z "$BINFMT_INTERP" ]; then
        command -v qemu-aarch64-static >/dev/null || {
            BINFMT_WHY="no qemu-aarch64-static (Debian's qemu-user-static)"
            return 1
        }
        BINFMT_INTERP=$(command -v qemu-aarch64-static)
        if printf '%s' ':semaphore-ci-aarch64:M::\x7f\x45\x4c\x46\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00:\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff:'"$BINFMT_INTERP"':F' \
            >"$BINFMT_DIR/register" 2>/dev/null; then
            BINFMT_OURS=$BINFMT_DIR/semaphore-ci-aarch64
        else
            BINFMT_WHY="cannot register qemu-aarch64-static with binfmt_misc"
            return 1
        fi
    fi
    "$probe" version >/dev/null 2>&1 && return 0
    BINFMT_WHY="binfmt_misc has an aarch64 handler ($BINFMT_INTERP) but $probe does not run through it"
    return 1
}
binfmt_aarch64_down() {
    [ -z "$BINFMT_OURS" ] || echo -1 >"$BINFMT_OURS" 2>/dev/null || true
    BINFMT_OURS=""
    [ -z "$BINFMT_MOUNTED" ] || umount "$BINFMT_DIR" 2>/dev/null || true
    BINFMT_MOUNTED=""
}
