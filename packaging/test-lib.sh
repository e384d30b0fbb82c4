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
